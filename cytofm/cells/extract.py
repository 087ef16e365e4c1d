"""Cell-centred patches: detect nuclei tile by tile and cut fixed-size patches around them.

Neighbouring tiles are decoded together, once, as a block of the pyramid level the patches
are made from, with a margin of half a patch (plus room for the detector's filters), so every
patch around a centre inside the block lies within the decoded pixels and no cell is lost at
tile or block borders. The detector works on those pixels (resampling them to its own
resolution) and each patch is resampled from them around its centre, so no pixel is decoded
twice and the block is never resampled whole. Each centre goes to the one tile whose own
(unpadded) box holds it, so a cell on a border belongs to exactly one tile.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from cytofm.cells.detect import Detector
from cytofm.wsi.reader import Slide, sample_window

__all__ = ["TileCells", "iter_tile_cells", "resample_patches"]


@dataclasses.dataclass
class TileCells:
    tile_index: int
    images: np.ndarray  # (n, P, P, 3) uint8
    coords: np.ndarray  # (n, 2) level-0 (x, y) centres, float64
    scores: np.ndarray  # (n,) float32
    pixels_read: int  # pixels decoded (the block's, on its first tile; 0 on the others)
    plane: int = -1  # a z-stack's focal plane the tile was read at (-1: a single plane)


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


def _read_block(slide, tb, planes, level, window) -> np.ndarray:
    """The block's pixels; on a z-stack (``planes``: each tile's chosen plane) each tile's box
    from its own plane and the margins from the block's most chosen plane."""
    lx0, ly0, lw, lh = window
    if planes is None:
        return slide.read_level(lx0, ly0, lw, lh, level)
    values, counts = np.unique(planes, return_counts=True)
    main = int(values[counts.argmax()])
    region = slide.at_plane(main).read_level(lx0, ly0, lw, lh, level)
    ds = float(slide.level_downsamples[level])
    for (x0, y0, x1, y1), plane in zip(tb, planes, strict=True):
        if int(plane) == main:
            continue
        bx0, by0 = max(int(np.floor(x0 / ds)) - lx0, 0), max(int(np.floor(y0 / ds)) - ly0, 0)
        bx1, by1 = min(int(np.ceil(x1 / ds)) - lx0, lw), min(int(np.ceil(y1 / ds)) - ly0, lh)
        if bx1 > bx0 and by1 > by0:
            region[by0:by1, bx0:bx1] = slide.at_plane(int(plane)).read_level(
                lx0 + bx0, ly0 + by0, bx1 - bx0, by1 - by0, level
            )
    return region


EDGE_UM = 1.0  # image_edge "mirror": detections closer than this to the edge are left out


def _mirrored_past_edge(region: np.ndarray, window, level_size) -> np.ndarray:
    """The block with the image mirrored where the window reaches past the image's edge,
    rather than white: an image cut through its cells (a microscope field, a crop) would
    otherwise end in a dark-to-white step along the cut, whose filter response is a row of
    "nuclei" on the cytoplasm beside the edge."""
    lx0, ly0, lw, lh = window
    width, height = level_size
    left, top = max(-lx0, 0), max(-ly0, 0)
    right, bottom = max(lx0 + lw - width, 0), max(ly0 + lh - height, 0)
    if not (left or top or right or bottom):
        return region
    inner = region[top : lh - bottom, left : lw - right]
    if min(inner.shape[:2]) < 2:
        return region
    # mirror (not repeat) the edge pixel; beyond one mirrored copy, repeat the mirror
    out = inner
    while out.shape[0] < lh or out.shape[1] < lw:
        pad = [min(top, out.shape[0] - 1), min(bottom, out.shape[0] - 1),
               min(left, out.shape[1] - 1), min(right, out.shape[1] - 1)]  # fmt: skip
        out = cv2.copyMakeBorder(out, *pad, cv2.BORDER_REFLECT_101)
        top, bottom, left, right = top - pad[0], bottom - pad[1], left - pad[2], right - pad[3]
    return np.ascontiguousarray(out)


def _block_cells(
    slide, boxes, idx, patch_px, patch_mpp, detector, margin, planes=None, image_edge="glass"
) -> list[TileCells]:
    """Decode one block of tiles once, at the pyramid level the patches are made from (with
    a margin for patches and filters), detect on those pixels, resample a patch around each
    centre from them and give each cell to the tile whose box holds it. ``image_edge``: what
    the detector sees past the image's edge (see :func:`iter_tile_cells`)."""
    level, window = _block_region(slide, boxes[idx], patch_px, patch_mpp, margin)
    lx0, ly0 = window[:2]
    ds = float(slide.level_downsamples[level])
    s = patch_mpp / slide.mpp / ds  # level px per patch px (>= 1 unless patches are finer)
    tile_planes = None if planes is None else np.asarray(planes)[idx]
    region = _read_block(slide, boxes[idx], tile_planes, level, window)
    mirror = image_edge == "mirror"
    seen = _mirrored_past_edge(region, window, slide.level_dimensions[level]) if mirror else region
    xy, scores = detector(seen, slide.mpp * ds)
    centres = np.asarray(xy, np.float64).reshape(-1, 2) + 0.5  # continuous level coordinates
    level0 = (centres + np.array([lx0, ly0], np.float64)) * ds
    reach = _patch_reach(patch_px, s)
    fits = (
        (centres[:, 0] - reach >= 0)
        & (centres[:, 1] - reach >= 0)
        & (centres[:, 0] + reach <= region.shape[1])
        & (centres[:, 1] + reach <= region.shape[0])
    )
    if mirror:  # a peak on the outermost micrometre: a blob cut by the edge meeting its mirror
        edge = EDGE_UM / slide.mpp
        width, height = slide.dimensions
        fits &= (
            (level0[:, 0] >= edge)
            & (level0[:, 1] >= edge)
            & (level0[:, 0] <= width - edge)
            & (level0[:, 1] <= height - edge)
        )
    owner = np.full(len(centres), -1)  # position in idx of the tile whose box holds it
    for n, t in enumerate(idx):
        bx0, by0, bx1, by1 = boxes[t]
        inside = (
            (owner < 0)
            & fits
            & (level0[:, 0] >= bx0)
            & (level0[:, 0] < bx1)
            & (level0[:, 1] >= by0)
            & (level0[:, 1] < by1)
        )
        owner[inside] = n
    order = np.argsort(owner, kind="stable")
    order = order[owner[order] >= 0]  # cells by tile, in detection order within a tile
    images = resample_patches(region, centres[order], patch_px, s)  # the block's at once
    starts = np.searchsorted(owner[order], np.arange(len(idx) + 1))
    scores = np.asarray(scores, np.float32)
    return [
        TileCells(
            tile_index=int(t),
            images=images[starts[n] : starts[n + 1]],
            coords=level0[order[starts[n] : starts[n + 1]]],
            scores=scores[order[starts[n] : starts[n + 1]]],
            pixels_read=int(region.shape[0] * region.shape[1]) if n == 0 else 0,
            plane=-1 if tile_planes is None else int(tile_planes[n]),
        )
        for n, t in enumerate(idx)
    ]


def _block_region(slide, tb: np.ndarray, patch_px: int, patch_mpp: float, margin: int):
    """The pyramid level a block of tiles (level-0 boxes ``tb``) is read from and the region
    ``(x, y, w, h)`` of it that is decoded: the tiles, a margin for the detector's filters,
    and never less than a patch's resampling reads."""
    f = patch_mpp / slide.mpp  # level-0 px per patch px
    level = slide.best_level(f)
    ds = float(slide.level_downsamples[level])
    s = f / ds  # level px per patch px
    pad = int(np.ceil(max(margin * s, _patch_reach(patch_px, s) + 1)))
    lx0 = int(np.floor(tb[:, 0].min() / ds)) - pad
    ly0 = int(np.floor(tb[:, 1].min() / ds)) - pad
    lx1 = int(np.ceil(tb[:, 2].max() / ds)) + pad
    ly1 = int(np.ceil(tb[:, 3].max() / ds)) + pad
    # no further than that past the slide's edge: a tile larger than the image (a microscope
    # field) would otherwise mostly be white padding to decode and filter
    width, height = slide.level_dimensions[level]
    lx0, ly0 = max(lx0, -pad), max(ly0, -pad)
    lx1, ly1 = min(lx1, width + pad), min(ly1, height + pad)
    return level, (lx0, ly0, lx1 - lx0, ly1 - ly0)


def _blur_pad(scale: float) -> int:
    return int(np.ceil(3 * 0.45 * scale)) + 2 if scale > 1 else 1


def _patch_reach(patch_px: int, scale: float) -> float:
    """Level pixels from a centre to the edge of what its patch's resampling reads."""
    return patch_px / 2 * scale + _blur_pad(scale) + 1


def resample_patches(
    region: np.ndarray, centres: np.ndarray, patch_px: int, scale: float
) -> np.ndarray:
    """(n, P, P, 3) patches of ``region`` centred on ``centres`` (continuous pixel
    coordinates: pixel i spans [i, i + 1)), ``scale`` region pixels per patch pixel.

    Patch pixel u covers region [c - P/2 * scale + u * scale, ... + scale), as
    :meth:`Slide.read` defines it: a Gaussian anti-alias (sigma 0.45 x scale) and bilinear
    sampling when shrinking, a plain crop when the centre is on the pixel grid at scale 1.
    The caller guarantees ``_patch_reach`` pixels of region around every centre.
    """
    centres = np.asarray(centres, np.float64)
    out = np.empty((len(centres), patch_px, patch_px, 3), np.uint8)
    half = patch_px / 2 * scale
    pad = _blur_pad(scale)
    # Many patches in a region: blur the region once rather than each window (a small blur
    # costs ~3x a large one per pixel, and windows overlap); the kernel never reaches past a
    # window's pad, so the pixels are the same.
    window_px = (2 * half + 2 * pad + 2) ** 2
    blurred = scale > 1 and 3 * len(centres) * window_px > region.shape[0] * region.shape[1]
    if blurred:
        region = cv2.GaussianBlur(region, (0, 0), sigmaX=0.45 * scale)
    for i, (cx, cy) in enumerate(centres):
        wx0, wy0 = int(np.floor(cx - half)) - pad, int(np.floor(cy - half)) - pad
        wx1, wy1 = int(np.ceil(cx + half)) + pad + 1, int(np.ceil(cy + half)) + pad + 1
        window = region[wy0:wy1, wx0:wx1]
        ox, oy = cx - half - wx0, cy - half - wy0  # patch origin in window coordinates
        if abs(scale - 1) < 1e-9 and abs(ox - round(ox)) < 1e-6 and abs(oy - round(oy)) < 1e-6:
            x, y = round(ox), round(oy)
            out[i] = window[y : y + patch_px, x : x + patch_px]
            continue
        tx, ty = ox + 0.5 * scale - 0.5, oy + 0.5 * scale - 0.5
        out[i] = sample_window(
            window, scale, tx, ty, (patch_px, patch_px), block=1, blur=not blurred
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
    planes: np.ndarray | None = None,
    image_edge: str = "glass",
) -> Iterator[TileCells]:
    """Yield the cells of each tile (level-0 ``boxes``), block by block and in tile order
    within a block.

    ``image_edge``: what the detector sees past the image's edge. ``glass`` (white): an object
    cut by the edge is found within its visible part, but a cut through cytoplasm is a
    dark-to-white step the detector may take for nuclei along the edge. ``mirror``: the image
    mirrored there, so a cut makes no step, and peaks on the outermost micrometre (a cut blob
    meeting its mirror image) are left out; patches keep white past the edge either way.

    Neighbouring tiles are read together in blocks of about ``block_px`` pixels a side (so
    the margins read twice are a small share of the pixels) and ``threads`` blocks are
    decoded and searched at once (OpenSlide and OpenCV release the GIL); at most one block
    more than that is in flight, so memory does not grow with the slide. ``planes``: a
    z-stack's chosen focal plane per tile (the tile stage's), each tile read at its own.
    """
    boxes = np.asarray(boxes)
    f = patch_mpp / slide.mpp
    margin = margin_px if margin_px is not None else patch_px // 2 + 8
    blocks = _blocks(boxes, f, block_px)

    regions = [_block_region(slide, boxes[idx], patch_px, patch_mpp, margin) for idx in blocks]
    if regions:  # tiles shared by neighbouring blocks are decoded once
        slide.plan_reads(regions[0][0], [region for _, region in regions])

    def work(idx: np.ndarray) -> list[TileCells]:
        return _block_cells(
            slide, boxes, idx, patch_px, patch_mpp, detector, margin, planes, image_edge
        )

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
