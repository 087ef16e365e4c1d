"""Which map of a slide holds its chromatin: the stain choice of the classical detector.

Haematoxylin (Papanicolaou, H&E) absorbs in all three channels, so the per-pixel minimum of
the three optical densities ("min-OD") isolates nuclei whatever the cytoplasm's colour. The
Romanowsky stains of blood, marrow and most aspirates (Giemsa, Wright, May-Grunwald, Diff-Quik)
colour chromatin blue-purple, which transmits blue: on them the minimum stays near zero. There
the slide's own stain vectors are estimated (Macenko, by tiatoolbox) and nuclei are found on the
concentration of the chromatin stain, the vector that absorbs red and green but little blue.

``cells.stain``: ``auto`` keeps min-OD wherever it shows chromatin (its 99th percentile over the
slide's sample reaches ``cells.min_darkness``) and otherwise estimates the vectors; ``min_od``
and ``nuclear`` force one map. The choice, the vectors and the reason go into provenance.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from cytofm.wsi.mask import optical_density

__all__ = ["StainChoice", "choose_stain", "estimate_stain_vectors", "nuclear_row"]

log = logging.getLogger(__name__)

STAINS = ("auto", "min_od", "nuclear")
MAX_NUCLEAR_BLUE = 0.25  # a chromatin stain that absorbs more blue than this is haematoxylin-like


@dataclasses.dataclass(frozen=True)
class StainChoice:
    """The map the detector works on: ``min_od``, or ``nuclear`` (concentration of stain row
    ``nuclear`` of ``vectors``, unit OD vectors in R, G, B)."""

    mode: str = "min_od"
    reason: str = "cells.stain: min_od"
    vectors: tuple[tuple[float, float, float], ...] | None = None
    nuclear: int | None = None
    min_od_p99: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.vectors is not None:
            out["vectors"] = [list(v) for v in self.vectors]
        return out


def min_od_map(od: np.ndarray) -> np.ndarray:
    return np.minimum(np.minimum(od[..., 0], od[..., 1]), od[..., 2])


def estimate_stain_vectors(rgb: np.ndarray) -> np.ndarray:
    """Two stain OD vectors (rows, unit length, R, G, B) of the stained pixels of ``rgb``
    (uint8 H x W x 3), by Macenko's method as tiatoolbox implements it."""
    from tiatoolbox.tools.stainextract import MacenkoExtractor

    return np.asarray(MacenkoExtractor().get_stain_matrix(np.ascontiguousarray(rgb)), np.float64)


def nuclear_row(vectors: np.ndarray) -> int:
    """The chromatin stain among the vectors: absorbs red and green, transmits blue."""
    v = np.asarray(vectors)
    return int(np.argmax((v[:, 0] + v[:, 1]) / 2 - v[:, 2]))


def choose_stain(
    sample: np.ndarray, background: np.ndarray, setting: str, min_darkness: float
) -> StainChoice:
    """The map for a slide from a sample of its stained regions (uint8 RGB, any shape with
    channels last)."""
    if setting not in STAINS:
        raise ValueError(f"cells.stain must be one of {STAINS}, got {setting!r}")
    if setting == "min_od":
        return StainChoice()
    rgb = np.asarray(sample, np.uint8).reshape(-1, 1, 3)
    p99 = float(np.percentile(min_od_map(optical_density(rgb, background)), 99))
    if setting == "auto" and p99 >= min_darkness:
        return StainChoice(
            reason=f"chromatin absorbs in every channel (99th percentile of the darkest-channel "
            f"OD {p99:.2f} >= cells.min_darkness {min_darkness:g})",
            min_od_p99=p99,
        )
    side = int(np.sqrt(len(rgb)))
    try:
        vectors = estimate_stain_vectors(rgb[: side * side].reshape(side, side, 3))
    except (ValueError, np.linalg.LinAlgError) as e:  # blank sample: nothing to estimate from
        return StainChoice(reason=f"stain vectors could not be estimated ({e})", min_od_p99=p99)
    row = nuclear_row(vectors)
    as_tuple = tuple(tuple(float(x) for x in r) for r in vectors)
    if setting == "auto" and vectors[row, 2] >= MAX_NUCLEAR_BLUE:
        return StainChoice(
            reason=f"the darkest-channel OD is faint ({p99:.2f}) but no stain transmits blue "
            f"(chromatin-like vector {np.round(vectors[row], 2).tolist()}): kept min-OD",
            vectors=as_tuple,
            nuclear=row,
            min_od_p99=p99,
        )
    return StainChoice(
        mode="nuclear",
        reason=(
            "cells.stain: nuclear"
            if setting == "nuclear"
            else f"the darkest-channel OD is faint ({p99:.2f} < cells.min_darkness "
            f"{min_darkness:g}) and the chromatin stain transmits blue (Romanowsky-like)"
        ),
        vectors=as_tuple,
        nuclear=row,
        min_od_p99=p99,
    )
