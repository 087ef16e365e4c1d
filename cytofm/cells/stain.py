"""Which map of a slide holds its chromatin: the stain choice of the classical detector.

Haematoxylin (Papanicolaou, H&E) absorbs in all three channels, so the per-pixel minimum of
the three optical densities ("min-OD") isolates nuclei whatever the cytoplasm's colour. The
Romanowsky stains of blood, marrow and most aspirates (Giemsa, Wright, May-Grunwald, Diff-Quik)
colour chromatin blue-purple, which transmits blue: on them the minimum stays near zero. There
the slide's own stain vectors are estimated (Macenko, as tiatoolbox does it) and nuclei are
found on the concentration of the chromatin stain, the vector that absorbs red and green but
little blue.

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


def estimate_stain_vectors(
    rgb: np.ndarray, luminosity_threshold: float = 0.8, angular_percentile: float = 99.0
) -> np.ndarray:
    """Two stain OD vectors (rows, unit length, R, G, B) of the stained pixels of ``rgb``
    (uint8 H x W x 3), by Macenko's method, step for step as tiatoolbox's
    ``MacenkoExtractor`` does it (a test holds the two equal). Written out here because
    importing tiatoolbox costs a cells job several seconds.

    Stained pixels: luminosity (L of Lab, after a 2-98 percentile contrast stretch) below
    ``luminosity_threshold``. Their optical densities span a plane (the two leading
    eigenvectors of their covariance); the stains are the directions at the
    ``100 - p`` and ``p`` percentiles of the angle in that plane, the first row the one
    absorbing more red.
    """
    img = np.ascontiguousarray(rgb, np.uint8)
    lo, hi = np.percentile(img, (2, 98))
    if lo >= hi:
        lo, hi = float(img.min()), float(img.max())
    if hi > lo:
        stretched = ((np.clip(img, lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)
    else:
        stretched = img
    import cv2

    lum = cv2.cvtColor(stretched, cv2.COLOR_RGB2LAB)[..., 0] / 255.0
    mask = (lum < luminosity_threshold).reshape(-1)
    if not mask.any():
        raise ValueError("no stained pixels (every pixel is brighter than the threshold)")
    safe = np.where(img == 0, 1, img).astype(np.float64)
    od = np.maximum(-np.log(safe / 255), 1e-6).reshape(-1, 3)[mask]
    _, vecs = np.linalg.eigh(np.cov(od, rowvar=False))
    vecs = vecs[:, [2, 1]]
    vecs[:, vecs[0] < 0] *= -1  # point into positive OD
    proj = od @ vecs
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo_phi, hi_phi = np.percentile(phi, (100 - angular_percentile, angular_percentile))
    v1 = vecs @ np.array([np.cos(lo_phi), np.sin(lo_phi)])
    v2 = vecs @ np.array([np.cos(hi_phi), np.sin(hi_phi)])
    pair = np.array([v1, v2]) if v1[0] > v2[0] else np.array([v2, v1])
    return pair / np.linalg.norm(pair, axis=1)[:, None]


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
