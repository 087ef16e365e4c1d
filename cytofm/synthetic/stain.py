"""Per-slide stain appearance: the nuisance that must not carry the class signal.

Colours are built in optical-density (OD) space, as Beer-Lambert absorption adds there:
a pixel's RGB is ``255 * exp(-OD)``, and OD is a sum of stain vectors times stain amounts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["LABS", "SlideStain"]

# Reference OD vectors (per unit stain amount) of a Papanicolaou-like stain.
_NUCLEUS = np.array([0.62, 0.68, 0.32])  # haematoxylin: blue-purple nuclei
_CYANO = np.array([0.60, 0.28, 0.26])  # light-green/cyanophilic cytoplasm
_EOSINO = np.array([0.12, 0.55, 0.30])  # eosin/orange-G: pink cytoplasm
_DEBRIS = np.array([0.20, 0.45, 0.55])  # amorphous debris, brownish


# Staining protocols of three laboratories: multipliers on the reference stain vectors (per
# R, G, B absorption), overall strength and blur. They differ as labs do (a redder or bluer
# haematoxylin, a stronger counterstain, paler and softer slides), never with the class.
LABS: dict[str, dict] = {
    "lab_a": {},
    "lab_b": {"nucleus": np.array([0.75, 1.15, 1.3]), "eosino": np.array([0.8, 1.2, 1.1])},
    "lab_c": {"cyano": np.array([1.2, 0.8, 0.9]), "intensity": 0.8, "blur": 1.3},
}


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
    def sample(cls, rng: np.random.Generator, lab: str | None = None) -> SlideStain:
        """A slide's stain; ``lab`` (a key of ``LABS``) shifts the reference colours and
        strength to that laboratory's protocol before the per-slide variation."""
        shift = LABS[lab] if lab else {}
        return cls(
            nucleus=_jitter(_NUCLEUS * shift.get("nucleus", 1.0), rng, 0.18),
            cyano=_jitter(_CYANO * shift.get("cyano", 1.0), rng, 0.25),
            eosino=_jitter(_EOSINO * shift.get("eosino", 1.0), rng, 0.25),
            debris=_jitter(_DEBRIS, rng, 0.2),
            intensity=float(rng.uniform(0.75, 1.25)) * shift.get("intensity", 1.0),
            background_od=np.abs(rng.normal(0.0, 0.015, size=3)) + 0.01,
            blur_px=float(rng.uniform(0.5, 1.3)) * shift.get("blur", 1.0),
        )
