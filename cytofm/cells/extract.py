"""Cell-centred patches: detect nuclei tile by tile and cut fixed-size patches around them.

Neighbouring tiles are read together, once, as a block at the patch resolution with a margin
of half a patch (plus room for the detector's filters), so every patch around a centre inside
the block lies within the read region and no cell is lost at tile or block borders. Each centre
goes to the one tile whose own (unpadded) box holds it, so a cell on a border belongs to
exactly one tile.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

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


def _blocks(boxes: np.ndarray, f: float, block_px: int) -> list[np.ndarray]:
    """Tile indices grouped into blocks of about ``block_px`` pixels a side at the patch
    resolution (K x K tiles of the grid, K >= 1), in order of their first tile."""
    if len(boxes) == 0:
        return []
    size = float(np.median(boxes[:, 2] - boxes[:, 0]))
    k = max(1, int(block_px // max(size / f, 1.0)))
    col = np.floor((boxes[:, 0] - boxes[:, 0].min()) / size + 1e-6).astype(np.int64) // k
    row = np.floor((boxes[:, 1] - boxes[:, 1].min()) / size + 1e-6).astype(np.int64) // k
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(row.tolist(), col.tolist(), strict=True)):
        groups.setdefault(key, []).append(i)
    return sorted((np.asarray(g) for g in groups.values()), key=lambda g: int(g[0]))


def _block_cells(slide, boxes, idx, patch_px, patch_mpp, detector, margin) -> list[TileCells]:
    """Read one block of tiles once (with a margin for patches and filters), detect on it,
    cut patches from the same pixels and give each cell to the tile whose box holds it."""
    f = patch_mpp / slide.mpp  # level-0 px per patch px
    tb = boxes[idx]
    x0, y0 = tb[:, 0].min(), tb[:, 1].min()
    x1, y1 = tb[:, 2].max(), tb[:, 3].max()
    core_w, core_h = int(np.ceil((x1 - x0) / f)), int(np.ceil((y1 - y0) / f))
    ox, oy = x0 - margin * f, y0 - margin * f  # level-0 origin of the padded read
    region = slide.read(ox, oy, (core_w + 2 * margin, core_h + 2 * margin), patch_mpp)
    xy, scores = detector(region, patch_mpp)
    level0 = (
        np.column_stack([ox + (xy[:, 0] + 0.5) * f, oy + (xy[:, 1] + 0.5) * f])
        if len(xy)
        else np.zeros((0, 2))
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
    out, taken = [], np.zeros(len(xy), bool)
    for n, t in enumerate(idx):
        bx0, by0, bx1, by1 = boxes[t]
        keep = (
            fits
            & ~taken
            & (level0[:, 0] >= bx0)
            & (level0[:, 0] < bx1)
            & (level0[:, 1] >= by0)
            & (level0[:, 1] < by1)
        )
        taken |= keep
        out.append(
            TileCells(
                tile_index=int(t),
                images=crop_patches(region, xy[keep], patch_px),
                coords=level0[keep],
                scores=scores[keep].astype(np.float32),
                pixels_read=int(region.shape[0] * region.shape[1]) if n == 0 else 0,
            )
        )
    return out


def iter_tile_cells(
    slide: Slide,
    boxes: np.ndarray,
    patch_px: int,
    patch_mpp: float,
    detector: Detector,
    margin_px: int | None = None,
    threads: int = 1,
    block_px: int = 1024,
) -> Iterator[TileCells]:
    """Yield the cells of each tile (level-0 ``boxes``), block by block and in tile order
    within a block.

    Neighbouring tiles are read together in blocks of about ``block_px`` pixels a side (so
    the margins read twice are a small share of the pixels) and ``threads`` blocks are
    decoded and searched at once (OpenSlide and OpenCV release the GIL); at most one block
    more than that is in flight, so memory does not grow with the slide.
    """
    boxes = np.asarray(boxes)
    f = patch_mpp / slide.mpp
    margin = margin_px if margin_px is not None else patch_px // 2 + 8
    blocks = _blocks(boxes, f, block_px)

    def work(idx: np.ndarray) -> list[TileCells]:
        return _block_cells(slide, boxes, idx, patch_px, patch_mpp, detector, margin)

    if threads <= 1:
        for idx in blocks:
            yield from work(idx)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="cells") as pool:
        pending: deque = deque()
        for idx in blocks:
            pending.append(pool.submit(work, idx))
            if len(pending) > threads:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
