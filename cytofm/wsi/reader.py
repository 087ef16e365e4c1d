"""Slide readers: open a WSI, know its resolution, read any region at any micrometres-per-pixel.

Backends are registered by name. ``openslide`` reads vendor formats (SVS, NDPI, MRXS, SCN, pyramidal
TIFF, ...) with OpenSlide, composited on white where the file has no data; ``tiatoolbox``
reads anything tiatoolbox's ``WSIReader.open`` understands, including formats OpenSlide cannot
(OME-TIFF, DICOM, JPEG 2000, plain images); ``image`` reads plain JPEG, PNG and BMP images
(microscope fields) whole with OpenCV; ``fields`` reads a folder (or glob) of a specimen's field
images as one slide (:mod:`cytofm.wsi.fields`); ``zstack`` reads every focal plane of an
OME-TIFF or multi-page TIFF z-stack (:mod:`cytofm.wsi.zstack`). ``auto`` picks ``zstack`` for a
TIFF whose image has a Z axis, ``openslide`` whenever OpenSlide recognises the file, ``image``
for a plain image, and tiatoolbox otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cytofm.errors import InputDataError
from cytofm.registry import READERS
from cytofm.wsi.backends import PLAIN_IMAGES, ImageSlide, OpenSlideSlide, TiatoolboxSlide
from cytofm.wsi.slide import (
    Slide,
    check_mpp,
    check_slide_file,
    resample,
    sample_window,
    sniff,
    tiff_resolution_mpp,
)

__all__ = [
    "BACKENDS",
    "ImageSlide",
    "OpenSlideSlide",
    "Slide",
    "TiatoolboxSlide",
    "check_mpp",
    "check_slide_file",
    "open_slide",
    "register_backend",
    "resample",
    "sample_window",
    "sniff",
    "tiff_resolution_mpp",
]

log = logging.getLogger(__name__)

# name -> ``open(path, slide_id, mpp) -> Slide``: the built-in readers and those other packages
# add with an entry point in the group ``cytofm.readers`` (see cytofm.registry)
BACKENDS = READERS


def register_backend(name: str):
    """Register a slide-opening function under ``name`` (``tiling.backend`` in config)."""
    return READERS.register(name)


def open_slide(
    path: str | Path, slide_id: str | None = None, mpp: float | None = None, backend: str = "auto"
) -> Slide:
    """Open a slide; ``mpp`` (from the sample sheet) overrides the file's metadata.

    Raises :class:`MissingResolutionError` naming the slide and the sheet column to set when no
    resolution is known, and :class:`InputDataError` for missing or unreadable files.
    """
    from cytofm.wsi.fields import is_specimen

    slide_id = slide_id or Path(path).stem
    if backend in ("auto", "fields") and is_specimen(path):  # a folder or glob of fields
        slide = BACKENDS["fields"](Path(path), slide_id, mpp)
        log.info("opened %r (%d fields)", slide, len(slide.fields))
        return slide
    path = Path(path)
    if not path.is_file():
        raise InputDataError(
            f"slide '{slide_id}': file not found: {path}. Fix the 'path' column of the sample "
            "sheet (relative paths there are taken from the sheet's folder), or remove the row."
        )
    check_slide_file(path, slide_id)
    if backend == "auto":
        import openslide

        from cytofm.wsi.zstack import zstack_planes

        if zstack_planes(path) > 1:  # OpenSlide would show the first plane only
            backend = "zstack"
        elif openslide.OpenSlide.detect_format(str(path)):
            backend = "openslide"
        elif sniff(path) in PLAIN_IMAGES:  # tiatoolbox would decode it whole too
            backend = "image"
        else:
            backend = "tiatoolbox"
    slide = BACKENDS[backend](path, slide_id, mpp)
    log.info("opened %r", slide)
    return slide
