"""Per-slide stain appearance: the nuisance that must not carry the class signal.

Colours are built in optical-density (OD) space, as Beer-Lambert absorption adds there:
a pixel's RGB is ``255 * exp(-OD)``, and OD is a sum of stain vectors times stain amounts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SlideStain"]

# Reference OD vectors (per unit stain amount) of a Papanicolaou-like stain.
_NUCLEUS = np.array([0.62, 0.68, 0.32])  # haematoxylin: blue-purple nuclei
_CYANO = np.array([0.60, 0.28, 0.26])  # light-green/cyanophilic cytoplasm
_EOSINO = np.array([0.12, 0.55, 0.30])  # eosin/orange-G: pink cytoplasm
_DEBRIS = np.array([0.20, 0.45, 0.55])  # amorphous debris, brownish


def _jitter(vec: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    out = np.clip(vec * (1.0 + rng.normal(0.0, amount, size=3)), 0.02, None)
    return out / np.linalg.norm(out)


@dataclasses.dataclass(frozen=True)
class SlideStain:
    """Stain vectors, intensity, background tint and blur of one slide."""

    nucleus: np.ndarray
    cyano: np.ndarray
    eosino: np.ndarray
    debris: np.ndarray
    intensity: float
    background_od: np.ndarray
    blur_px: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> SlideStain:
        return cls(
            nucleus=_jitter(_NUCLEUS, rng, 0.18),
            cyano=_jitter(_CYANO, rng, 0.25),
            eosino=_jitter(_EOSINO, rng, 0.25),
            debris=_jitter(_DEBRIS, rng, 0.2),
            intensity=float(rng.uniform(0.75, 1.25)),
            background_od=np.abs(rng.normal(0.0, 0.015, size=3)) + 0.01,
            blur_px=float(rng.uniform(0.5, 1.3)),
        )
