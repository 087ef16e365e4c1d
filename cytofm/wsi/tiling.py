"""Tile grids at a target resolution, kept where the foreground mask says there is material."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from cytofm.wsi.reader import Slide

__all__ = ["TileGrid", "tile_grid"]


@dataclasses.dataclass
class TileGrid:
    """Kept tiles of one slide, in level-0 pixels."""

    boxes: np.ndarray  # (N, 4) int64: x0, y0, x1, y1 at level 0
    foreground: np.ndarray  # (N,) float32: fraction of the tile covered by the mask
    tile_px: int  # tile width/height at `mpp`
    mpp: float
    n_total: int  # tiles in the full grid before masking

    @property
    def centres(self) -> np.ndarray:
        """(N, 2) int64 level-0 (x, y) tile centres."""
        return np.stack(
            [
                (self.boxes[:, 0] + self.boxes[:, 2]) // 2,
                (self.boxes[:, 1] + self.boxes[:, 3]) // 2,
            ],
            axis=1,
        ).astype(np.int64)

    def __len__(self) -> int:
        return len(self.boxes)


def tile_grid(
    slide: Slide, mask: np.ndarray, mask_mpp: float, tile_px: int, mpp: float, min_foreground: float
) -> TileGrid:
    """Non-overlapping ``tile_px`` tiles at ``mpp`` covering the slide; keep masked ones.

    A tile is kept when at least one mask pixel falls in it and its covered fraction is at
    least ``min_foreground``. Fractions use an integral image, so the cost is one pass over
    the mask whatever the number of tiles.
    """
    w0, h0 = slide.dimensions
    step0 = tile_px * mpp / slide.mpp  # tile size in level-0 pixels (may be fractional)
    nx, ny = max(int(math.ceil(w0 / step0)), 1), max(int(math.ceil(h0 / step0)), 1)
    xs = np.round(np.arange(nx + 1) * step0).astype(np.int64)
    ys = np.round(np.arange(ny + 1) * step0).astype(np.int64)
    m2l = mask_mpp / slide.mpp  # level-0 pixels per mask pixel
    mh, mw = mask.shape

    def to_mask(v: np.ndarray, limit: int) -> np.ndarray:
        return np.clip(np.round(v / m2l).astype(np.int64), 0, limit)

    mx, my = to_mask(xs, mw), to_mask(ys, mh)
    # per-tile mask sums: column sums per tile row, then per tile column (no full-size copy)
    covered = np.zeros((ny, nx), np.int64)
    for j in range(ny):
        cols = mask[my[j] : my[j + 1]].sum(axis=0, dtype=np.int64)  # (mw,)
        csum = np.concatenate([[0], np.cumsum(cols)])
        covered[j] = csum[mx[1:]] - csum[mx[:-1]]
    area = np.maximum(np.outer(my[1:] - my[:-1], mx[1:] - mx[:-1]), 1)
    frac = covered / area
    keep = (covered > 0) & (frac >= min_foreground)
    iy, ix = np.nonzero(keep)
    boxes = np.stack([xs[ix], ys[iy], xs[ix + 1], ys[iy + 1]], axis=1).astype(np.int64)
    return TileGrid(
        boxes=boxes,
        foreground=frac[iy, ix].astype(np.float32),
        tile_px=tile_px,
        mpp=mpp,
        n_total=nx * ny,
    )
