"""Slide readers for single files: ``openslide`` (vendor formats and pyramidal TIFF),
``tiatoolbox`` (what OpenSlide cannot read: OME-TIFF, DICOM, JPEG 2000, ...) and ``image`` (a
plain JPEG, PNG or BMP field, decoded whole by OpenCV). Registered by name in
:data:`cytofm.registry.READERS`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from cytofm.errors import InputDataError
from cytofm.wsi.slide import Slide, check_mpp, sniff, tiff_resolution_mpp

__all__ = [
    "PLAIN_IMAGES",
    "ImageSlide",
    "OpenSlideSlide",
    "TiatoolboxSlide",
    "open_image",
    "open_openslide",
    "open_tiatoolbox",
]

log = logging.getLogger(__name__)


class OpenSlideSlide(Slide):
    """Vendor formats and pyramidal TIFF through OpenSlide directly.

    tiatoolbox's ``OpenSlideWSIReader`` wraps the same library and adds nothing for reading
    pixels or resolution, but importing it costs seconds per job, so this backend talks to
    OpenSlide itself; the ``tiatoolbox`` backend covers the formats OpenSlide cannot read.
    """

    backend = "openslide"

    def __init__(self, path: Path, slide_id: str, mpp_override: float | None):
        import openslide

        try:
            self._osr = openslide.OpenSlide(str(path))
        except Exception as exc:  # OpenSlideError, OpenSlideUnsupportedFormatError, ...
            raise InputDataError(
                f"slide '{slide_id}': OpenSlide cannot read {path} ({exc}). Check that the file "
                "is complete (not truncated by a copy) and is a supported whole-slide format."
            ) from exc
        props = self._osr.properties
        # Only a resolution the file states is used; estimates from the objective are guesses.
        meta = props.get(openslide.PROPERTY_NAME_MPP_X)
        mpp_meta = float(meta) if meta else tiff_resolution_mpp(path)
        mpp, source = check_mpp(slide_id, path, mpp_override, mpp_meta)
        objective = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        super().__init__(
            path=path,
            slide_id=slide_id,
            mpp=mpp,
            dimensions=tuple(self._osr.dimensions),
            level_downsamples=[float(d) for d in self._osr.level_downsamples],
            level_dimensions=[tuple(d) for d in self._osr.level_dimensions],
            mpp_source=source,
            objective_power=float(objective) if objective else None,
            vendor=props.get(openslide.PROPERTY_NAME_VENDOR),
        )
        from cytofm.wsi.tiled import TiledTiff

        # Aperio and generic TIFF levels are decoded straight from their tiles where that
        # gives OpenSlide's pixels exactly (2.5-4x faster, each tile once)
        self._tiles = TiledTiff.open(path, self.vendor, self.level_dimensions)

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._osr.close()

    def plan_reads(self, level: int, regions) -> None:
        if self._tiles is not None:
            self._tiles.plan(level, self._osr, regions)

    def properties(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._osr.properties.items()}

    def _read_level(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        tiles = self._tiles.level(level, self._osr) if self._tiles is not None else None
        if tiles is not None:
            return tiles.read(x, y, w, h)
        ds = self.level_downsamples[level]
        loc = (int(round(x * ds)), int(round(y * ds)))
        bgra = _openslide_bgra(self._osr, loc, level, w, h)
        if bgra is not None:
            rgb = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)
            alpha = cv2.extractChannel(bgra, 3)
            if int(alpha.min()) == 255:
                return rgb
            # premultiplied colour over white: c * a / 255 + 255 - a = c_premultiplied + 255 - a
            return cv2.add(rgb, cv2.cvtColor(255 - alpha, cv2.COLOR_GRAY2RGB))
        rgba = np.asarray(self._osr.read_region(loc, level, (w, h)))
        rgb = rgba[..., :3]
        alpha = rgba[..., 3]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgb)
        a = alpha[..., None].astype(np.float32) / 255.0  # composite empty regions on white
        return (rgb * a + 255.0 * (1.0 - a)).astype(np.uint8)


def _openslide_bgra(osr, loc: tuple[int, int], level: int, w: int, h: int) -> np.ndarray | None:
    """OpenSlide's premultiplied ARGB pixels decoded straight into a numpy array, viewed as
    (h, w, 4) B, G, R, A bytes: skips the PIL image and its conversions, which cost about as
    much as the decode. None where this build of openslide-python lacks the call."""
    import ctypes

    from openslide import lowlevel

    read = getattr(lowlevel, "_read_region", None)
    handle = getattr(osr, "_osr", None)
    if read is None or handle is None or w <= 0 or h <= 0 or sys.byteorder != "little":
        return None
    buf = np.empty((h, w), np.uint32)
    read(handle, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)), loc[0], loc[1], level, w, h)
    return buf.view(np.uint8).reshape(h, w, 4)


class TiatoolboxSlide(Slide):
    backend = "tiatoolbox"

    def __init__(self, path: Path, slide_id: str, mpp_override: float | None):
        from tiatoolbox.wsicore.wsireader import WSIReader

        try:
            self._reader = WSIReader.open(path)
            info = self._reader.info
        except Exception as exc:
            raise InputDataError(
                f"slide '{slide_id}': neither OpenSlide nor tiatoolbox can read {path} "
                f"({type(exc).__name__}: {exc}). If it is a {sniff(path)} file, it is probably "
                "truncated or corrupt: copy it again from the scanner or archive. Readable "
                "formats: SVS, NDPI, MRXS, SCN, BIF, pyramidal TIFF (OpenSlide); OME-TIFF, "
                "DICOM, JPEG 2000, plain images (tiatoolbox)."
            ) from exc
        mpp_meta = float(info.mpp[0]) if info.mpp is not None else None
        mpp, source = check_mpp(slide_id, path, mpp_override, mpp_meta)
        super().__init__(
            path=path,
            slide_id=slide_id,
            mpp=mpp,
            dimensions=tuple(int(v) for v in info.slide_dimensions),
            level_downsamples=[float(d) for d in info.level_downsamples],
            level_dimensions=[tuple(int(v) for v in d) for d in info.level_dimensions],
            mpp_source=source,
            objective_power=info.objective_power,
            vendor=info.vendor,
        )

    def properties(self) -> dict[str, str]:
        raw = getattr(self._reader.info, "raw", None) or {}
        return {str(k): str(v) for k, v in dict(raw).items()}

    def _read_level(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        loc = (int(round(x * ds)), int(round(y * ds)))
        img = self._reader.read_rect(loc, (w, h), resolution=level, units="level")
        img = np.asarray(img)
        return np.ascontiguousarray(img[..., :3]).astype(np.uint8, copy=False)


# Plain raster images (microscope fields): decoded whole, in this process, by OpenCV.
PLAIN_IMAGES = ("JPEG image", "PNG image", "BMP image")


class ImageSlide(Slide):
    """A plain image (a microscope field: JPEG, PNG, BMP) as a one-level slide.

    Read whole with OpenCV (the decoder tiatoolbox's virtual reader uses, so pixels are the
    same) without importing tiatoolbox, which takes seconds per job. Plain images carry no
    microscope resolution, so the sample sheet's ``mpp`` is required.
    """

    backend = "image"

    def __init__(self, path: Path, slide_id: str, mpp_override: float | None):
        mpp, source = check_mpp(slide_id, path, mpp_override, None)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputDataError(
                f"slide '{slide_id}': {path} cannot be decoded as a {sniff(path)}; it is "
                "probably truncated or corrupt: copy it again, or remove its row from the "
                "sample sheet."
            )
        from cytofm.wsi.frame import mend_dead_frame

        # dead black lines at the frame (EDF composites) would read as a row of nuclei
        self._rgb, self.dead_frame = mend_dead_frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        h, w = self._rgb.shape[:2]
        super().__init__(
            path=path,
            slide_id=slide_id,
            mpp=mpp,
            dimensions=(w, h),
            level_downsamples=[1.0],
            level_dimensions=[(w, h)],
            mpp_source=source,
        )

    def info(self) -> dict:
        return {**super().info(), "dead_frame_lines": self.dead_frame}

    def _read_level(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        return self._rgb[y : y + h, x : x + w]


def open_image(path: Path, slide_id: str, mpp: float | None) -> Slide:
    return ImageSlide(path, slide_id, mpp)


def open_openslide(path: Path, slide_id: str, mpp: float | None) -> Slide:
    return OpenSlideSlide(path, slide_id, mpp)


def open_tiatoolbox(path: Path, slide_id: str, mpp: float | None) -> Slide:
    return TiatoolboxSlide(path, slide_id, mpp)
