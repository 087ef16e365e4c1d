"""Which map of a slide holds its chromatin: the stain choice of the classical detector.

Haematoxylin (Papanicolaou, H&E) absorbs in all three channels, so the per-pixel minimum of
the three optical densities ("min-OD") isolates nuclei whatever the cytoplasm's colour. The
Romanowsky stains of blood, marrow and most aspirates (Giemsa, Wright, May-Grunwald, Diff-Quik)
colour chromatin blue-purple, which transmits blue: on them the minimum stays near zero. There
the slide's own stain vectors are estimated (Macenko, by tiatoolbox) and nuclei are found on the
concentration of the chromatin stain, the vector that absorbs red and green but little blue.

The stain is what the laboratory used, so it is stated, not guessed: ``cells.stain``
(``min_od`` or ``nuclear``) for every slide, or the sample sheet's ``stain`` column per slide
(see :func:`stain_mode`). The choice, the vectors and the reason go into provenance.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

__all__ = [
    "SHEET_STAINS",
    "StainChoice",
    "choose_stain",
    "estimate_stain_vectors",
    "nuclear_row",
    "stain_mode",
]

log = logging.getLogger(__name__)

STAINS = ("min_od", "nuclear")
# the sample sheet's `stain` column: stain names -> chromatin map
SHEET_STAINS = {
    **dict.fromkeys(
        ("papanicolaou", "pap", "h&e", "he", "hematoxylin", "haematoxylin", "min_od"), "min_od"
    ),
    **dict.fromkeys(
        ("romanowsky", "giemsa", "wright", "wright-giemsa", "may-grunwald", "may-grunwald-giemsa",
         "mgg", "diff-quik", "leishman", "nuclear"),
        "nuclear",
    ),
}  # fmt: skip


def stain_mode(sheet_value: str | None, default: str) -> str:
    """The chromatin map for a slide: its sheet ``stain`` (case-insensitive), else ``default``
    (``cells.stain``). Raises ValueError for a stain name it does not know."""
    value = (sheet_value or "").strip().lower()
    if not value:
        return default
    if value not in SHEET_STAINS:
        raise ValueError(
            f"stain {sheet_value!r} is not known; use one of {sorted(SHEET_STAINS)} (or leave it "
            "empty for cells.stain)"
        )
    return SHEET_STAINS[value]


@dataclasses.dataclass(frozen=True)
class StainChoice:
    """The map the detector works on: ``min_od``, or ``nuclear`` (concentration of stain row
    ``nuclear`` of ``vectors``, unit OD vectors in R, G, B)."""

    mode: str = "min_od"
    reason: str = "cells.stain: min_od"
    vectors: tuple[tuple[float, float, float], ...] | None = None
    nuclear: int | None = None

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


def choose_stain(sample: np.ndarray | None, setting: str, why: str = "") -> StainChoice:
    """The map for a slide: ``min_od``, or ``nuclear`` with the chromatin stain's vector
    estimated from a sample of its stained regions (uint8 RGB, channels last)."""
    if setting not in STAINS:
        raise ValueError(f"cells.stain must be one of {STAINS}, got {setting!r}")
    why = why or f"cells.stain: {setting}"
    if setting == "min_od":
        return StainChoice(reason=why)
    if sample is None:
        raise ValueError("the nuclear map needs a sample of the slide to estimate stains from")
    rgb = np.asarray(sample, np.uint8).reshape(-1, 3)
    side = int(np.sqrt(len(rgb)))
    try:
        vectors = estimate_stain_vectors(rgb[: side * side].reshape(side, side, 3))
    except (ValueError, np.linalg.LinAlgError) as e:  # blank sample: nothing to estimate from
        return StainChoice(reason=f"{why}, but no stain vectors could be estimated ({e})")
    row = nuclear_row(vectors)
    log.info("stain vectors (OD R, G, B) %s; chromatin: row %d", np.round(vectors, 3).tolist(), row)
    return StainChoice(
        mode="nuclear",
        reason=why,
        vectors=tuple(tuple(float(x) for x in r) for r in vectors),
        nuclear=row,
    )
