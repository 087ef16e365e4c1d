"""Specimens made of microscope fields: a folder (or a glob) of field images of one specimen,
read as one slide.

The usable fields are laid out on a grid with a gap of glass between them, so tiling, nucleus
detection, patch extraction, embedding and MIL treat a specimen exactly as a slide, and no
tile or patch straddles two fields. Each field's box in the mosaic is known, so every cell
gets its field index and its coordinates inside the field. Fields that cannot be decoded or
whose size differs from the specimen's are left out and listed (``bad_fields``); a specimen
with no usable field is an error naming the folder.
"""

from __future__ import annotations

import collections
import functools
import glob
import math
import os
from pathlib import Path

import cv2
import numpy as np

from cytofm.errors import InputDataError
from cytofm.wsi.slide import Slide, check_mpp

__all__ = ["FieldMosaic", "field_files", "is_specimen", "slide_sha256"]

FIELD_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
GLOB_CHARS = set("*?[")


def is_specimen(path: str | Path) -> bool:
    """A sheet ``path`` naming a folder of fields or a glob of them."""
    text = str(path)
    return bool(GLOB_CHARS & set(text)) or os.path.isdir(text)


def field_files(path: str | Path) -> list[Path]:
    """The field images of a specimen, in name order."""
    text = str(path)
    if GLOB_CHARS & set(text):
        found = [Path(p) for p in glob.glob(text)]
    elif os.path.isdir(text):
        found = list(Path(text).iterdir())
    else:
        return []
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in FIELD_SUFFIXES)


def slide_sha256(path: str | Path) -> str:
    """SHA-256 of a slide file, or of a specimen's field names and contents."""
    import hashlib

    from cytofm.provenance import file_sha256

    if not is_specimen(path):
        return file_sha256(path)
    digest = hashlib.sha256()
    for f in field_files(path):
        digest.update(f.name.encode())
        digest.update(file_sha256(f).encode())
    return digest.hexdigest()


def _decode(path: Path) -> np.ndarray | None:
    """A field's pixels, dead lines at its frame mended (:mod:`cytofm.wsi.frame`)."""
    from cytofm.wsi.frame import mend_dead_frame

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else mend_dead_frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))[0]


class FieldMosaic(Slide):
    """The usable fields of a specimen on a grid, ``gap`` pixels of white glass apart."""

    backend = "fields"

    def __init__(self, path: Path, slide_id: str, mpp_override: float | None, gap: int = 64):
        mpp, source = check_mpp(slide_id, path, mpp_override, None)
        files = field_files(path)
        if not files:
            raise InputDataError(
                f"specimen '{slide_id}': no field images ({', '.join(sorted(FIELD_SUFFIXES))}) "
                f"in {path}; fix the sheet's 'path' or add the fields"
            )
        sizes, self.bad_fields = {}, []
        for f in files:
            rgb = _decode(f)
            if rgb is None:
                self.bad_fields.append({"name": f.name, "reason": "cannot be decoded"})
            else:
                sizes[f] = rgb.shape[1::-1]
        if not sizes:
            raise InputDataError(
                f"specimen '{slide_id}': none of the {len(files)} field images in {path} can "
                "be decoded; copy them again or remove the row"
            )
        (fw, fh), _ = collections.Counter(sizes.values()).most_common(1)[0]
        good = []
        for f, size in sizes.items():
            if size == (fw, fh):
                good.append(f)
            else:
                reason = f"size {size[0]}x{size[1]}, the specimen's fields are {fw}x{fh}"
                self.bad_fields.append({"name": f.name, "reason": reason})
        self.bad_fields.sort(key=lambda b: b["name"])
        cols = math.ceil(math.sqrt(len(good)))
        rows = math.ceil(len(good) / cols)
        self.field_size, self.gap, self._files = (fw, fh), gap, good
        self.boxes = np.array(
            [
                [c * (fw + gap), r * (fh + gap), c * (fw + gap) + fw, r * (fh + gap) + fh]
                for r, c in (divmod(i, cols) for i in range(len(good)))
            ],
            np.int64,
        )
        width, height = cols * (fw + gap) - gap, rows * (fh + gap) - gap
        super().__init__(path, slide_id, mpp, (width, height), [1.0], [(width, height)], source)
        self._field = functools.lru_cache(maxsize=16)(self._load)

    @property
    def fields(self) -> list[dict]:
        """Name and mosaic box (x0, y0, x1, y1) of every usable field, in index order."""
        pairs = zip(self._files, self.boxes, strict=True)
        return [{"name": f.name, "box": b.tolist()} for f, b in pairs]

    def info(self) -> dict:
        return {**super().info(), "n_fields": len(self._files), "bad_fields": self.bad_fields}

    def _load(self, i: int) -> np.ndarray:
        rgb = _decode(self._files[i])
        if rgb is None:  # decoded when the specimen was opened: changed since
            raise InputDataError(f"field {self._files[i]} of '{self.slide_id}' changed on disk")
        return rgb

    def field_of(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Field index (-1 in a gap) and field-local coordinates of level-0 points (x, y)."""
        coords = np.asarray(coords, np.float64).reshape(-1, 2)
        fw, fh = self.field_size
        col = np.floor(coords[:, 0] / (fw + self.gap)).astype(np.int64)
        row = np.floor(coords[:, 1] / (fh + self.gap)).astype(np.int64)
        cols = math.ceil(math.sqrt(len(self._files)))
        local = coords - np.stack([col * (fw + self.gap), row * (fh + self.gap)], 1)
        inside = (local[:, 0] < fw) & (local[:, 1] < fh) & (col >= 0) & (row >= 0)
        index = np.where(inside, row * cols + col, -1)
        index[index >= len(self._files)] = -1
        return index, local

    def _read_level(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        out = np.full((h, w, 3), 255, np.uint8)
        hit = np.flatnonzero(
            (self.boxes[:, 0] < x + w)
            & (self.boxes[:, 2] > x)
            & (self.boxes[:, 1] < y + h)
            & (self.boxes[:, 3] > y)
        )
        for i in hit:
            x0, y0, x1, y1 = self.boxes[i]
            ax0, ay0, ax1, ay1 = max(x0, x), max(y0, y), min(x1, x + w), min(y1, y + h)
            field = self._field(int(i))
            out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = field[
                ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0
            ]
        return out


def open_fields(path: Path, slide_id: str, mpp: float | None) -> Slide:
    return FieldMosaic(path, slide_id, mpp)
