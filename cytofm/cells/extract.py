"""Cell-centred patches: detect nuclei tile by tile and cut fixed-size patches around them.

Each tile is read once at the patch resolution with a margin of half a patch (plus room for
the detector's filters), so every patch around a centre inside the tile lies within the read
region and no cell is lost at tile borders. Only centres inside a tile's own (unpadded) box
are kept, so a cell on a border belongs to exactly one tile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from cytofm.cells.detect import Detector
from cytofm.wsi.reader import Slide

__all__ = ["TileCells", "crop_patches", "iter_tile_cells"]


@dataclasses.dataclass
class TileCells:
    tile_index: int
    images: np.ndarray  # (n, P, P, 3) uint8
    coords: np.ndarray  # (n, 2) level-0 (x, y) centres, float64
    scores: np.ndarray  # (n,) float32
    pixels_read: int  # pixels decoded for this tile (at patch mpp)


def crop_patches(image: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
    """Cut (n, size, size, 3) patches centred on integer-rounded ``centres`` (x, y).

    The caller guarantees every patch lies inside ``image``.
    """
    half = size // 2
    out = np.empty((len(centres), size, size, 3), np.uint8)
    for i, (x, y) in enumerate(np.round(centres).astype(np.int64)):
        out[i] = image[y - half : y - half + size, x - half : x - half + size]
    return out


def iter_tile_cells(
    slide: Slide,
    boxes: np.ndarray,
    patch_px: int,
    patch_mpp: float,
    detector: Detector,
    margin_px: int | None = None,
) -> Iterator[TileCells]:
    """Yield the cells of each tile (level-0 ``boxes``), in tile order."""
    f = patch_mpp / slide.mpp  # level-0 px per patch px
    margin = margin_px if margin_px is not None else patch_px // 2 + 8
    for t, (x0, y0, x1, y1) in enumerate(np.asarray(boxes)):
        core_w = int(np.ceil((x1 - x0) / f))
        core_h = int(np.ceil((y1 - y0) / f))
        ox, oy = x0 - margin * f, y0 - margin * f  # level-0 origin of the padded read
        region = slide.read(ox, oy, (core_w + 2 * margin, core_h + 2 * margin), patch_mpp)
        xy, scores = detector(region, patch_mpp)
        level0 = (
            np.column_stack([ox + (xy[:, 0] + 0.5) * f, oy + (xy[:, 1] + 0.5) * f])
            if len(xy)
            else np.zeros((0, 2))
        )
        inside = (
            (level0[:, 0] >= x0) & (level0[:, 0] < x1) & (level0[:, 1] >= y0) & (level0[:, 1] < y1)
        )
        # patches need a half-patch margin around the (rounded) centre
        half = patch_px // 2
        r = np.round(xy)
        fits = (
            (r[:, 0] >= half)
            & (r[:, 1] >= half)
            & (r[:, 0] - half + patch_px <= region.shape[1])
            & (r[:, 1] - half + patch_px <= region.shape[0])
        )
        keep = inside & fits
        yield TileCells(
            tile_index=t,
            images=crop_patches(region, xy[keep], patch_px),
            coords=level0[keep],
            scores=scores[keep].astype(np.float32),
            pixels_read=int(region.shape[0] * region.shape[1]),
        )
