"""Synthetic slides: place cells and debris on a canvas and write a pyramidal tiled TIFF.

The TIFF has one tiled, JPEG-compressed page per pyramid level and its resolution tags set,
so OpenSlide opens it as ``generic-tiff`` with every level and the correct ``mpp``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile

from cytofm.synthetic.morphology import (
    CellSpec,
    render_cell,
    render_debris,
    sample_cell,
)
from cytofm.synthetic.stain import SlideStain

__all__ = [
    "SlideCanvas",
    "class_mix",
    "focal_surface",
    "od_to_rgb",
    "render_slide_canvas",
    "write_pyramidal_tiff",
    "write_zstack_tiff",
]

MIN_NUCLEAR_SPACING_UM = 12.0


@dataclasses.dataclass
class SlideCanvas:
    """A rendered slide (level 0) and its ground truth."""

    rgb: np.ndarray  # (H, W, 3) uint8
    cells: pd.DataFrame  # x, y (nuclear centroid, level-0 px), class, radius_um, n_nuclei
    stain: SlideStain
    mpp: float


def class_mix(abnormal: bool, abnormal_cell_fraction: float) -> dict[str, float]:
    """Class proportions on a slide: abnormal slides hold a small fraction of dysplastic cells."""
    base = {"squamous": 0.72, "lymphocyte": 0.2, "koilocyte": 0.08, "dysplastic": 0.0}
    if not abnormal:
        return base
    scale = 1.0 - abnormal_cell_fraction
    mix = {k: v * scale for k, v in base.items()}
    mix["dysplastic"] = abnormal_cell_fraction
    return mix


def _quota(mix: Mapping[str, float], n: int) -> dict[str, int]:
    """Cells per class: largest-remainder rounding of ``mix * n``, and at least one cell of
    every class with a non-zero share (an abnormal slide always shows its abnormal cells)."""
    total = sum(mix.values())
    exact = {c: n * p / total for c, p in mix.items()}
    quota = {c: int(np.floor(v)) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: exact[c] - quota[c], reverse=True)[
        : n - sum(quota.values())
    ]:
        quota[c] += 1
    for c, p in mix.items():
        if p > 0 and quota[c] == 0:
            quota[c] = 1
    return quota


def od_to_rgb(
    od: np.ndarray, stain: SlideStain, rng: np.random.Generator, band: int = 256
) -> np.ndarray:
    """Blur (focus), convert OD to RGB by Beer-Lambert, add sensor noise.

    Worked in bands of rows: the noise is drawn band after band, which is the same sequence
    as one draw for the whole image, without its full-size float64 temporaries."""
    if stain.blur_px > 0:
        od = cv2.GaussianBlur(od, (0, 0), stain.blur_px)
    out = np.empty(od.shape, np.uint8)
    for y in range(0, od.shape[0], band):
        rgb = np.exp(-od[y : y + band])
        rgb *= 255.0
        rgb += rng.normal(0.0, 1.5, size=rgb.shape).astype(np.float32)
        np.clip(rgb, 0, 255, out=rgb)
        out[y : y + band] = rgb
    return out


def _background(h: int, w: int, stain: SlideStain, rng: np.random.Generator) -> np.ndarray:
    """Background OD: a tint plus smooth uneven illumination."""
    small = rng.normal(0.0, 1.0, size=(max(h // 256, 2), max(w // 256, 2))).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    field *= 0.006
    od = np.empty((h, w, 3), np.float32)
    od[:] = stain.background_od.astype(np.float32)
    od += field[..., None]
    return np.clip(od, 0, None, out=od)


def _too_close(xy: np.ndarray, placed: list[tuple[float, float]], min_px: float) -> bool:
    if not placed:
        return False
    d = np.hypot(*(np.asarray(placed) - xy).T)
    return bool(d.min() < min_px)


def render_slide_canvas(
    width: int,
    height: int,
    mpp: float,
    mix: Mapping[str, float],
    *,
    cells_per_mm2: float,
    cluster_prob: float,
    debris_per_mm2: float,
    rng: np.random.Generator,
) -> SlideCanvas:
    """Render one sparse cytology slide with single cells, small clusters and debris."""
    stain = SlideStain.sample(rng)
    od = _background(height, width, stain, rng)
    area_mm2 = width * height * (mpp / 1000.0) ** 2
    n_target = max(int(round(cells_per_mm2 * area_mm2)), 1)
    quota = _quota(mix, n_target)
    min_px = MIN_NUCLEAR_SPACING_UM / mpp

    placed: list[tuple[float, float]] = []
    rows: list[dict] = []
    specs: list[tuple[CellSpec, float, float]] = []
    attempts = 0
    while sum(quota.values()) > 0 and attempts < 50 * n_target:
        attempts += 1
        names = [c for c, q in quota.items() if q > 0]
        weights = np.array([quota[c] for c in names], float)
        cls = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        size = int(rng.integers(2, 5)) if rng.random() < cluster_prob else 1
        anchor: tuple[float, float] | None = None
        for _ in range(min(size, quota[cls])):
            spec = sample_cell(cls, rng)
            margin = spec.extent_um / mpp + 2
            for _try in range(30):
                if anchor is None:
                    cx = rng.uniform(margin, width - margin)
                    cy = rng.uniform(margin, height - margin)
                else:  # cluster member: touching or overlapping its neighbour
                    dist = max(0.7 * 2 * spec.radius_um, MIN_NUCLEAR_SPACING_UM + 1) / mpp
                    theta = rng.uniform(0, 2 * np.pi)
                    cx, cy = anchor[0] + dist * np.cos(theta), anchor[1] + dist * np.sin(theta)
                    if not (margin <= cx <= width - margin and margin <= cy <= height - margin):
                        continue
                dx, dy = spec.centroid_um
                nxy = np.array([cx + dx / mpp, cy + dy / mpp])
                if not _too_close(nxy, placed, min_px):
                    break
            else:
                break
            placed.append((float(nxy[0]), float(nxy[1])))
            specs.append((spec, cx, cy))
            rows.append(
                {
                    "x": float(nxy[0]),
                    "y": float(nxy[1]),
                    "class": cls,
                    "radius_um": spec.radius_um,
                    "nucleus_radius_um": float(np.mean([n.radius_um for n in spec.nuclei])),
                    "n_nuclei": len(spec.nuclei),
                    "cluster": size > 1,
                }
            )
            anchor = (cx, cy)
            quota[cls] -= 1
    for spec, cx, cy in specs:
        render_cell(od, spec, cx, cy, mpp, stain, rng)
    n_debris = int(rng.poisson(debris_per_mm2 * area_mm2))
    for _ in range(n_debris):
        render_debris(od, rng.uniform(0, width), rng.uniform(0, height), mpp, stain, rng)
    rgb = od_to_rgb(od, stain, rng)
    cells = pd.DataFrame(
        rows, columns=["x", "y", "class", "radius_um", "nucleus_radius_um", "n_nuclei", "cluster"]
    )
    return SlideCanvas(rgb=rgb, cells=cells, stain=stain, mpp=mpp)


def _tiles(level: np.ndarray, height: int, width: int, tile: int) -> Iterator[np.ndarray]:
    """Tiles of a (height, width) image that repeats ``level`` periodically, row-major."""
    lh, lw = level.shape[:2]
    for y in range(0, height, tile):
        rows = np.arange(y, y + tile) % lh
        band = level[rows]
        for x in range(0, width, tile):
            cols = np.arange(x, x + tile) % lw
            block = band[:, cols]
            if y + tile > height or x + tile > width:  # edge tiles: pad with white
                block = block.copy()
                block[max(height - y, 0) :] = 255
                block[:, max(width - x, 0) :] = 255
            yield block


def write_pyramidal_tiff(
    path: str | Path,
    canvas: np.ndarray,
    mpp: float,
    *,
    shape: tuple[int, int] | None = None,
    tile: int = 256,
    quality: int = 90,
    min_level_px: int = 512,
) -> list[tuple[int, int]]:
    """Write ``canvas`` as a tiled pyramidal TIFF readable by OpenSlide.

    ``shape`` (height, width) larger than the canvas repeats the canvas periodically, which
    makes very large benchmark slides without holding them in memory: only one tile is
    encoded at a time. Returns the (height, width) of every level written.
    """
    height, width = shape or canvas.shape[:2]
    levels = [canvas]
    dims = [(height, width)]
    while max(dims[-1]) > min_level_px and min(levels[-1].shape[:2]) >= 2:
        prev = levels[-1]
        levels.append(
            cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA)
        )
        dims.append((dims[-1][0] // 2, dims[-1][1] // 2))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k, (level, (h, w)) in enumerate(zip(levels, dims, strict=True)):
            res = 1e4 / (mpp * 2**k)  # pixels per centimetre
            tif.write(
                _tiles(level, h, w, tile),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=0 if k == 0 else 1,
                description=f"cytofm synthetic slide level={k} mpp={mpp * 2**k:.6g}",
                metadata=None,
            )
    return dims


def focal_surface(height: int, width: int, n_planes: int, block_px: int, rng) -> np.ndarray:
    """The true sharpest plane per ``block_px`` block: a tilted, gently curved surface (as a
    smear's thickness and a stage's tilt make it) spanning most of the stack, (rows, cols)."""
    rows, cols = -(-height // block_px), -(-width // block_px)
    yy, xx = np.meshgrid(np.linspace(0, 1, rows), np.linspace(0, 1, cols), indexing="ij")
    a, b = rng.uniform(0.5, 1.0, 2) * rng.choice([-1, 1], 2)
    phase = rng.uniform(0, 2 * np.pi)
    surface = a * xx + b * yy + 0.35 * np.sin(2 * np.pi * (xx + yy) + phase)
    surface = (surface - surface.min()) / max(np.ptp(surface), 1e-9)
    return np.round(0.5 + surface * (n_planes - 2)).astype(np.int16)


def write_zstack_tiff(
    path: str | Path,
    canvas: np.ndarray,
    mpp: float,
    best_plane: np.ndarray,
    n_planes: int,
    *,
    block_px: int = 128,
    blur_um_per_plane: float = 0.6,
    tile: int = 256,
    quality: int = 90,
    min_level_px: int = 512,
) -> None:
    """Write ``canvas`` as a pyramidal OME-TIFF z-stack: plane z of block (r, c) is the canvas
    blurred by a Gaussian of ``blur_um_per_plane`` x |z - best_plane[r, c]| micrometres (the
    focal plane itself is sharp)."""
    height, width = canvas.shape[:2]
    step = blur_um_per_plane / mpp  # pixels of blur per plane away from focus
    blurred = [canvas] + [
        cv2.GaussianBlur(canvas, (0, 0), sigmaX=step * d) for d in range(1, n_planes)
    ]
    stack = np.empty((n_planes, height, width, 3), np.uint8)
    for r in range(best_plane.shape[0]):
        for c in range(best_plane.shape[1]):
            ys, xs = (
                slice(r * block_px, (r + 1) * block_px),
                slice(c * block_px, (c + 1) * block_px),
            )
            for z in range(n_planes):
                stack[z, ys, xs] = blurred[abs(z - int(best_plane[r, c]))][ys, xs]
    levels = [stack]
    while max(levels[-1].shape[1:3]) > min_level_px:
        prev = levels[-1]
        levels.append(
            np.stack(
                [
                    cv2.resize(p, (p.shape[1] // 2, p.shape[0] // 2), interpolation=cv2.INTER_AREA)
                    for p in prev
                ]
            )
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    common = {"tile": (tile, tile), "photometric": "rgb", "compression": "jpeg",
              "compressionargs": {"level": quality}}  # fmt: skip
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(
            stack,
            subifds=len(levels) - 1,
            metadata={
                "axes": "ZYXS",
                "PhysicalSizeX": mpp,
                "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": mpp,
                "PhysicalSizeYUnit": "µm",
            },
            **common,
        )
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **common)
