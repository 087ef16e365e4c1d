"""Slides with several focal planes (z-stacks): OME-TIFF with a Z axis, and multi-page TIFF
exports whose pages are the planes of one image.

OpenSlide shows such a file's first plane only. Here every plane of every pyramid level is read
from its TIFF pages directly (tiled pages tile by tile, :class:`cytofm.wsi.tiled.TileReader`;
a page stored in strips is decoded whole once). A slide reads its ``plane`` (the middle one
unless another is chosen); :meth:`Slide.at_plane` gives a view of the same slide on another
plane, so threads can read different planes at once. Which plane is sharpest is decided per
tile by the ``tile`` stage (:func:`choose_planes`).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import cv2
import numpy as np

from cytofm.errors import InputDataError
from cytofm.wsi.slide import Slide, check_mpp, tiff_resolution_mpp
from cytofm.wsi.tiled import TileReader

__all__ = ["ZStackSlide", "choose_planes", "focus_measure", "zstack_planes"]

_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def zstack_planes(path: Path) -> int:
    """Focal planes of a TIFF's first image series (1 for anything else)."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return 1
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return int(series.shape[series.axes.index("Z")]) if "Z" in series.axes else 1
    except Exception:  # not a TIFF tifffile reads: the other readers decide
        return 1


def _ome_mpp(tif) -> float | None:
    """PhysicalSizeX of an OME-TIFF, in micrometres."""
    meta = tif.ome_metadata or ""
    size = re.search(r'PhysicalSizeX="([^"]+)"', meta)
    if not size:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', meta)
    return float(size.group(1)) * _UM.get(unit.group(1) if unit else "µm", 1.0)


class ZStackSlide(Slide):
    """A TIFF z-stack: ``planes`` focal planes at every pyramid level."""

    backend = "zstack"

    def __init__(self, path: Path, slide_id: str, mpp_override: float | None):
        import tifffile

        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            axes = series.axes
            # Z (OME, ImageJ hyperstacks), or I/Q (plain multi-page exports) when asked for
            if axes[0] not in "ZIQ" or axes[-1] not in "SC" or len(axes) != 4:
                raise ValueError(f"axes {axes!r}: expected planes first and colour last")
            self.planes = int(series.shape[0])
            levels = [series, *series.levels[1:]]
            self._pages = [[lv.pages[z] for z in range(self.planes)] for lv in levels]
        except Exception as exc:
            raise InputDataError(
                f"slide '{slide_id}': {path} is not a z-stack this reader understands ({exc}); "
                "it reads OME-TIFF with a Z axis and multi-page TIFF exports of the planes"
            ) from exc
        mpp, source = check_mpp(
            slide_id, path, mpp_override, _ome_mpp(self._tif) or tiff_resolution_mpp(Path(path))
        )
        dims = [
            (int(p[0].keyframe.imagewidth), int(p[0].keyframe.imagelength)) for p in self._pages
        ]
        super().__init__(
            path=path,
            slide_id=slide_id,
            mpp=mpp,
            dimensions=dims[0],
            level_downsamples=[dims[0][0] / w for w, _ in dims],
            level_dimensions=dims,
            mpp_source=source,
            vendor="ome-tiff" if self._tif.is_ome else "tiff",
        )
        self.plane = self.planes // 2
        self._fd = os.open(path, os.O_RDONLY)
        self._readers: dict[tuple[int, int], TileReader | np.ndarray] = {}
        self._lock = threading.Lock()

    def info(self) -> dict:
        return {**super().info(), "planes": self.planes}

    def close(self) -> None:
        self._tif.close()
        os.close(self._fd)

    def _reader(self, level: int, plane: int):
        with self._lock:
            key = (level, plane)
            if key not in self._readers:
                page = self._pages[level][plane]
                if page.keyframe.is_tiled:
                    self._readers[key] = TileReader(page, self._fd)
                else:  # strips: the plane decoded whole, once
                    self._readers[key] = np.asarray(page.asarray())[..., :3]
            return self._readers[key]

    def _read_level(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        reader = self._reader(level, self.plane)
        if isinstance(reader, np.ndarray):
            return np.ascontiguousarray(reader[y : y + h, x : x + w])
        return reader.read(x, y, w, h)


def open_zstack(path: Path, slide_id: str, mpp: float | None) -> Slide:
    return ZStackSlide(path, slide_id, mpp)


def focus_measure(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: high where edges are sharp."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(cv2.Laplacian(grey, cv2.CV_32F, ksize=3).var())


def choose_planes(
    slide: Slide, boxes: np.ndarray, mpp: float, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Per tile (level-0 ``boxes``): the sharpest plane by :func:`focus_measure` at ``mpp``
    (the detector's resolution), and every plane's measure, (n_tiles,) and (n_tiles, planes).
    A slide with one plane gets plane 0 everywhere."""
    n_planes = getattr(slide, "planes", 1)
    scores = np.zeros((len(boxes), n_planes), np.float32)
    if n_planes == 1 or len(boxes) == 0:
        return np.zeros(len(boxes), np.int16), scores
    views = [slide.at_plane(z) for z in range(n_planes)]
    f = mpp / slide.mpp

    def measure(i: int) -> None:
        x0, y0, x1, y1 = boxes[i]
        size = (max(int(round((x1 - x0) / f)), 8), max(int(round((y1 - y0) / f)), 8))
        for z, view in enumerate(views):
            scores[i, z] = focus_measure(view.read(x0, y0, size, mpp))

    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads, thread_name_prefix="focus") as pool:
            list(pool.map(measure, range(len(boxes))))
    else:
        for i in range(len(boxes)):
            measure(i)
    return scores.argmax(1).astype(np.int16), scores
