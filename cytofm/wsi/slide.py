"""What every slide reader shares: the :class:`Slide` base (level choice, resampling to the
requested micrometres per pixel, padding outside the slide), the resolution check
(:func:`check_mpp`), TIFF resolution tags, and the checks that a file is what its name says.

Backends subclass :class:`Slide` (:mod:`cytofm.wsi.backends`, :mod:`cytofm.wsi.fields`,
:mod:`cytofm.wsi.zstack`); :func:`cytofm.wsi.reader.open_slide` picks one.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import cv2
import numpy as np

from cytofm.errors import InputDataError, MissingResolutionError

__all__ = [
    "Slide",
    "check_mpp",
    "check_slide_file",
    "resample",
    "sample_window",
    "sniff",
    "tiff_resolution_mpp",
]


class Slide:
    """A whole-slide image with a known level-0 resolution.

    Subclasses implement :meth:`_read_level`; everything else (level choice, resampling to
    the requested mpp, padding outside the slide) is shared.
    """

    backend = "base"
    planes = 1  # focal planes (a z-stack has several)
    plane = 0  # the one this object reads

    def __init__(
        self,
        path: Path,
        slide_id: str,
        mpp: float,
        dimensions: tuple[int, int],
        level_downsamples: list[float],
        level_dimensions: list[tuple[int, int]],
        mpp_source: str,
        objective_power: float | None = None,
        vendor: str | None = None,
    ):
        self.path = path
        self.slide_id = slide_id
        self.mpp = float(mpp)
        self.dimensions = dimensions  # level-0 (width, height)
        self.level_downsamples = level_downsamples
        self.level_dimensions = level_dimensions
        self.mpp_source = mpp_source
        self.objective_power = objective_power
        self.vendor = vendor

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"Slide({self.slide_id!r}, {w}x{h} px, mpp={self.mpp:.4g} from {self.mpp_source}, "
            f"levels={len(self.level_downsamples)}, backend={self.backend})"
        )

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release file handles."""

    def at_plane(self, plane: int) -> Slide:
        """This slide read at focal ``plane``: a view sharing its file and caches (threads may
        read several planes at once); itself when it has one plane or that one."""
        if int(plane) == self.plane:
            return self
        if not 0 <= int(plane) < self.planes:
            raise ValueError(f"slide '{self.slide_id}' has {self.planes} plane(s), not {plane}")
        view = copy.copy(self)
        view.plane = int(plane)
        return view

    def info(self) -> dict:
        """Metadata for provenance (no file names: those may carry personal data)."""
        return {
            "slide_id": self.slide_id,
            "width": self.dimensions[0],
            "height": self.dimensions[1],
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "vendor": self.vendor,
            "level_downsamples": [float(d) for d in self.level_downsamples],
            "backend": self.backend,
        }

    def properties(self) -> dict[str, str]:
        """Every metadata field the file holds (vendor tags: may include scan dates,
        barcodes, operator names). Logged only when ``mlflow.log_slide_metadata`` is set."""
        return {}

    def best_level(self, downsample: float) -> int:
        """Coarsest level whose downsample does not exceed ``downsample`` by more than 1%:
        pyramids of odd-sized slides have levels a hair coarser than a power of two (12500 px
        halved four times is 781 px, a downsample of 16.005), and passing such a level over
        for one twice as large would decode four times the pixels to gain nothing visible."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.01:
                best = i
        return best

    def read(self, x0: float, y0: float, size: tuple[int, int], mpp: float) -> np.ndarray:
        """Read ``size`` = (width, height) pixels at ``mpp`` whose top-left is level-0 (x0, y0).

        Output pixel (u, v) covers level-0 [x0 + u*f, x0 + (u+1)*f) with f = mpp / slide mpp,
        exactly (sub-pixel offsets included), so coordinates computed from any read agree.
        Reads from the coarsest level that is at least as fine as ``mpp``. Returns uint8 RGB
        (height, width, 3); areas outside the slide are white.
        """
        w_out, h_out = int(size[0]), int(size[1])
        factor = mpp / self.mpp  # level-0 pixels per output pixel
        level = self.best_level(factor)
        ds = self.level_downsamples[level]
        scale = factor / ds  # level pixels per output pixel (>= 1 unless upsampling)
        fx, fy = x0 / ds, y0 / ds  # window origin in level pixels (fractional)
        # a hair below a whole pixel (x * (mpp / slide mpp) / downsample in floats) is that pixel
        lx0, ly0 = int(math.floor(fx + 1e-6)), int(math.floor(fy + 1e-6))
        if abs(scale - 1.0) < 1e-6 and abs(fx - lx0) < 1e-6 and abs(fy - ly0) < 1e-6:
            return self._read_level_padded(lx0, ly0, w_out, h_out, level)  # aligned: no resampling
        extra = _block_factor(scale)  # room for whole k x k blocks when shrinking a lot
        lw = int(math.ceil(fx + w_out * scale)) - lx0 + 2 + extra
        lh = int(math.ceil(fy + h_out * scale)) - ly0 + 2 + extra
        region = self._read_level_padded(lx0, ly0, lw, lh, level)
        # output pixel centre u + 0.5 sits at level coordinate fx + (u + 0.5) * scale
        tx = fx - lx0 + 0.5 * scale - 0.5
        ty = fy - ly0 + 0.5 * scale - 0.5
        return sample_window(region, scale, tx, ty, (w_out, h_out))

    def read_level(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        """``w`` x ``h`` pixels of pyramid ``level`` from its pixel (x, y), as stored (no
        resampling); areas outside the slide are white."""
        return self._read_level_padded(int(x), int(y), int(w), int(h), level)

    def _read_level_checked(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        try:
            return self._read_level(x, y, w, h, level)
        except InputDataError:
            raise
        except Exception as exc:  # OpenSlideError, tifffile/zarr decode errors, OSError, ...
            raise InputDataError(
                f"slide '{self.slide_id}': reading level {level} at ({x}, {y}) size {w}x{h} of "
                f"{self.path} failed ({type(exc).__name__}: {exc}). The file is truncated or "
                "corrupt: copy it again from the scanner or archive, or remove its row from "
                "the sample sheet."
            ) from exc

    def _read_level_padded(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        """Read a level region, clipping to the level's bounds and padding with white."""
        lw, lh = self.level_dimensions[level]
        cx0, cy0 = max(x, 0), max(y, 0)
        cx1, cy1 = min(x + w, lw), min(y + h, lh)
        if cx0 == x and cy0 == y and cx1 == x + w and cy1 == y + h:
            return self._read_level_checked(x, y, w, h, level)
        out = np.full((h, w, 3), 255, np.uint8)
        if cx1 > cx0 and cy1 > cy0:
            out[cy0 - y : cy1 - y, cx0 - x : cx1 - x] = self._read_level_checked(
                cx0, cy0, cx1 - cx0, cy1 - cy0, level
            )
        return out

    def _read_level(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        raise NotImplementedError

    def plan_reads(self, level: int, regions) -> None:
        """Level regions ``(x, y, w, h)`` about to be read with :meth:`read_level`: a reader
        that decodes tiles may keep those shared by several regions until the last one (the
        default ignores the plan)."""


# Leading bytes of file types a slide is sometimes confused with, for a clear error.
_SIGNATURES = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF8", "GIF image"),
    (b"BM", "BMP image"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"%PDF", "PDF document"),
    (b"<", "text (HTML/XML)"),
)
# Extensions whose files are TIFF containers (SVS, NDPI, SCN, BIF, Philips and generic TIFF).
_TIFF_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".svslide", ".qptiff"}


def sniff(path: Path) -> str:
    """What the file's first bytes say it is ('TIFF', 'PNG image', 'text', 'empty', 'unknown')."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        return "empty"
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown"
    return "text"


def check_slide_file(path: Path, slide_id: str) -> None:
    """Refuse empty files and files whose content contradicts their extension, before a
    reader library gets them (their own errors rarely name the file or the fix)."""
    size = path.stat().st_size
    if size == 0:
        raise InputDataError(
            f"slide '{slide_id}': {path} is empty (0 bytes). The copy or download did not "
            "finish; copy the slide again, or remove its row from the sample sheet."
        )
    kind = sniff(path)
    suffix = path.suffix.lower()
    if suffix in _TIFF_SUFFIXES and kind not in ("TIFF", "BigTIFF"):
        raise InputDataError(
            f"slide '{slide_id}': {path} is named {suffix} but holds {kind}, not a TIFF-based "
            f"slide. Point the sample sheet's 'path' at the real slide file"
            + (
                "; a plain image can be used if renamed to its type and given an 'mpp'"
                if kind.endswith("image")
                else ""
            )
            + "."
        )


def check_mpp(
    slide_id: str, path: Path, mpp_override: float | None, mpp_meta: float | None
) -> tuple[float, str]:
    """The slide's micrometres per pixel and where it came from (``sample_sheet`` or
    ``metadata``): the sheet's value wins; a missing or implausible one raises, naming the slide
    and the sheet column to fix."""
    if mpp_override is not None and not (
        isinstance(mpp_override, float) and math.isnan(mpp_override)
    ):
        value = float(mpp_override)
        if not 0.01 <= value <= 100:
            raise InputDataError(
                f"slide '{slide_id}': mpp {value!r} from the sample sheet is not a plausible "
                "micrometres-per-pixel value (expected 0.01-100, e.g. 0.25 at 40x, 0.5 at 20x)"
            )
        return value, "sample_sheet"
    if mpp_meta is not None and math.isfinite(mpp_meta) and mpp_meta > 0:
        return float(mpp_meta), "metadata"
    raise MissingResolutionError(
        f"slide '{slide_id}' ({path.name}) has no resolution (micrometres per pixel) in its "
        "metadata. Set it in the sample sheet's 'mpp' column for this slide (e.g. 0.25 for a "
        "40x scan, 0.5 for 20x); cytofm never guesses a resolution."
    )


def resample(
    rgb: np.ndarray, mpp: float, to_mpp: float, coarse: bool = False
) -> tuple[np.ndarray, float]:
    """``rgb`` (at ``mpp``) resampled to ``to_mpp`` the way :meth:`Slide.read` resamples a
    level (a Gaussian anti-alias of sigma 0.45 x the shrink factor, then bilinear sampling at
    the output pixel centres), so an image reaches nearly the same pixels at ``to_mpp``
    whatever resolution it was read at. Returns the image and the factor (output px per input
    px): output pixel u is centred on input pixel coordinate (u + 0.5) / factor - 0.5.

    ``coarse``: shrinking by 2 or more, average whole k x k blocks (k the integer part of
    the shrink) and blur only what remains of the anti-alias, on k x k fewer pixels: about 5x
    cheaper at a shrink of 2, 1-2 grey levels from the exact read on average (up to ~50 on
    the sharpest edges), which is what a detector's search needs and a stored patch does
    not."""
    factor = mpp / to_mpp
    if abs(factor - 1.0) <= 1e-3:
        return rgb, 1.0
    size = (max(int(round(rgb.shape[1] * factor)), 1), max(int(round(rgb.shape[0] * factor)), 1))
    s = 1.0 / factor  # input px per output px
    block = int(s) if coarse and s >= 2 else None
    return sample_window(rgb, s, 0.5 * s - 0.5, 0.5 * s - 0.5, size, block=block), factor


def _block_factor(scale: float) -> int:
    """Shrinking by more than 4, pixels are first averaged in k x k blocks (k = scale // 2)."""
    return int(scale // 2) if scale > 4 else 1


def sample_window(
    region: np.ndarray,
    scale: float,
    tx: float,
    ty: float,
    size: tuple[int, int],
    block: int | None = None,
    blur: bool = True,
) -> np.ndarray:
    """Output pixel (u, v) sampled at ``region`` pixel coordinate (tx + u * scale, ty + v *
    scale), bilinearly, after a Gaussian anti-alias of sigma 0.45 x scale when shrinking.

    Shrinking by more than 4 (a thumbnail), the region is first averaged over k x k blocks
    (exact, cheap) and the Gaussian, on k x k fewer pixels, makes up the rest of the blur
    (variances add: a k-pixel box has (k^2 - 1) / 12), so its kernel stays a few pixels wide
    instead of 6 x 0.45 x scale (on a real slide's 0.5 um/px pixels shrunk 8x: 1 grey level
    from the one-step blur on average, 17 at most); ``block`` sets k (1: none).
    ``blur=False``: the caller has blurred ``region`` already."""
    k = _block_factor(scale) if block is None else block
    sigma = 0.45 * scale if scale > 1 and blur else 0.0
    if k > 1:
        h, w = region.shape[0] // k * k, region.shape[1] // k * k
        region = cv2.resize(region[:h, :w], (w // k, h // k), interpolation=cv2.INTER_AREA)
        sigma = math.sqrt(max(sigma**2 - (k * k - 1) / 12, 0.0)) / k
        scale, tx, ty = scale / k, (tx - (k - 1) / 2) / k, (ty - (k - 1) / 2) / k
    if sigma > 0:
        region = cv2.GaussianBlur(region, (0, 0), sigmaX=sigma)
    matrix = np.array([[scale, 0.0, tx], [0.0, scale, ty]], np.float64)
    return cv2.warpAffine(
        region, matrix, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip


def tiff_resolution_mpp(path: Path) -> float | None:
    """Resolution from TIFF tags (ResolutionUnit cm or inch) when OpenSlide has none."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tags = page.tags
            if "XResolution" not in tags or "ResolutionUnit" not in tags:
                return None
            num, den = tags["XResolution"].value
            unit = int(tags["ResolutionUnit"].value)
            per_unit = num / den if den else 0
            if per_unit <= 0:
                return None
            if unit == 3:  # centimetre
                return 1e4 / per_unit
            if unit == 2:  # inch; 72 dpi etc. are screen defaults, not a scan resolution
                mpp = 25400.0 / per_unit
                return mpp if mpp < 50 else None
    except Exception:  # unreadable tags: treat as absent
        return None
    return None
