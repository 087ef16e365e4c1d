"""Foreground masks for sparse cytology.

A tissue mask tuned for H&E (Otsu on saturation or greyscale, then removal of small objects)
assumes large tissue areas. Cytology is mostly empty glass with isolated cells, pale
cytoplasm and small clusters; Otsu then splits dark nuclei from everything else and drops pale
single cells. Here background colour is estimated from the brightest pixels, absorption is
measured in optical density relative to it, and anything that absorbs a little more than glass
is kept, down to the size of a single small cell.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from cytofm.wsi.reader import Slide

__all__ = [
    "estimate_background",
    "foreground_mask",
    "optical_density",
    "read_thumbnail",
]


def read_thumbnail(
    slide: Slide, mpp: float, block_level_px: int = 1024, threads: int = 1
) -> np.ndarray:
    """The whole slide at ``mpp``, read block by block so memory stays bounded by the output
    (``threads`` blocks at a time).

    Each block spans at most ``block_level_px`` pixels of the pyramid level it is read from,
    so a slide without a low-resolution level never costs more than one such block. A
    thumbnail of up to twice that a side is read in one piece instead: OpenSlide resamples
    (through cairo, 2-3x slower) every read that starts between two pixels of a level whose
    downsample is not a whole number, as in most scanners' pyramids (16.005 for a 12,500 px
    slide's 781 px level), and a read from the level's origin starts on its pixel grid.
    """
    w0, h0 = slide.dimensions
    factor = mpp / slide.mpp
    w, h = max(int(math.ceil(w0 / factor)), 1), max(int(math.ceil(h0 / factor)), 1)
    scale = factor / slide.level_downsamples[slide.best_level(factor)]  # level px per output px
    block = max(int(block_level_px / max(scale, 1.0)), 16)
    if max(w, h) <= 2 * block:
        block = max(w, h)
    out = np.empty((h, w, 3), np.uint8)

    def read(xy: tuple[int, int]) -> None:
        x, y = xy
        bw, bh = min(block, w - x), min(block, h - y)
        out[y : y + bh, x : x + bw] = slide.read(x * factor, y * factor, (bw, bh), mpp)

    starts = [(x, y) for y in range(0, h, block) for x in range(0, w, block)]
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(threads, thread_name_prefix="thumbnail") as pool:
            list(pool.map(read, starts))
    else:
        for xy in starts:
            read(xy)
    return out


def estimate_background(rgb: np.ndarray) -> np.ndarray:
    """Glass colour: per-channel median of the brightest 10% of pixels (float, shape (3,))."""
    pixels = rgb.reshape(-1, 3)
    if len(pixels) > 2_000_000:  # a strided sample is plenty for a median
        pixels = pixels[:: len(pixels) // 1_000_000]
    # brightness as the channel sum (the mean's order, exactly, in integers)
    brightness = pixels[:, 0].astype(np.uint16) + pixels[:, 1] + pixels[:, 2]
    bright = pixels[brightness >= np.percentile(brightness, 90)]
    bg = np.median(bright, axis=0).astype(np.float32)
    return np.clip(bg, 1.0, 255.0)


def optical_density(rgb: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Per-channel optical density relative to the glass colour, >= 0, float32 (H, W, 3).

    Computed with a 256-entry lookup table per channel (uint8 input has 256 values), which is
    several times faster than a per-pixel logarithm.
    """
    bg = np.asarray(background, np.float32)
    values = np.arange(256, dtype=np.float32)
    lut = np.clip(np.log((bg[None, :] + 1.0) / (values[:, None] + 1.0)), 0.0, None)  # (256, 3)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise TypeError(f"optical_density expects uint8 RGB, got {rgb.dtype}")
    return cv2.LUT(np.ascontiguousarray(rgb), np.ascontiguousarray(lut.reshape(256, 1, 3)))


def foreground_mask(
    thumb: np.ndarray,
    mpp: float,
    background: np.ndarray,
    *,
    od_threshold: float = 0.06,
    min_object_um2: float = 40.0,
    dilate_um: float = 8.0,
) -> np.ndarray:
    """Boolean mask of everything that absorbs more than ``od_threshold`` above glass.

    The largest per-channel OD is used, so pale cytoplasm of any colour counts; objects
    smaller than ``min_object_um2`` (dust, specks) are dropped; the rest is dilated by
    ``dilate_um`` so cell borders fall inside.
    """
    # No smoothing: it would spread a dust speck past min_object_um2; the thumbnail is already
    # an average over many scan pixels, so sensor noise is far below the threshold.
    # OD rises as a channel darkens: "any channel's OD above the threshold" is a lookup
    # per channel of the same table optical_density uses, then an OR over the channels
    values = np.arange(256, dtype=np.uint8).reshape(256, 1, 1).repeat(3, axis=2)
    above = (optical_density(values, background) > od_threshold).astype(np.uint8)  # (256,1,3)
    mask = np.empty(thumb.shape[:2], bool)
    for y in range(0, thumb.shape[0], 256):  # strips: no full-size temporaries
        c0, c1, c2 = cv2.split(cv2.LUT(np.ascontiguousarray(thumb[y : y + 256]), above))
        mask[y : y + 256] = cv2.bitwise_or(cv2.bitwise_or(c0, c1), c2).view(bool)
    min_px = int(min_object_um2 / (mpp * mpp))
    if min_px > 1:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
        small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_px)
        small = small[small > 0]  # label 0 is background
        if len(small):  # a lookup per label: np.isin would sort a copy of every label
            keep = np.ones(len(stats), bool)
            keep[small] = False
            mask &= keep[labels]
        del labels
    radius = int(round(dilate_um / mpp))
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.dilate(mask.view(np.uint8), kernel).astype(bool)
    return mask
