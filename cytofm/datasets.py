"""Import labelled cell-image collections (image folders or a CSV) into the patch-store format."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cytofm.config import DatasetConfig
from cytofm.errors import InputDataError
from cytofm.labels import check_labels

__all__ = ["IMAGE_SUFFIXES", "decode_image", "fit_patch", "list_collection", "pixel_hash"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def list_collection(cfg: DatasetConfig) -> pd.DataFrame:
    """Rows of (path, label, group, split) with absolute paths, in a stable order, and a
    ``meta_<column>`` per ``meta_columns``.

    ``split`` is empty unless a CSV has the ``split_column`` (train/val/test per row).
    """
    root = Path(cfg.path)
    if cfg.format == "folder":
        if not root.is_dir():
            raise InputDataError(
                f"dataset '{cfg.name}': folder {root} not found; 'path' must be a folder with one "
                "sub-folder per class"
            )
        rows = [
            {"path": str(f), "label": d.name, "group": "", "split": ""}
            for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            for f in sorted(d.rglob("*"))
            if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
        ]
        table = pd.DataFrame(rows, columns=["path", "label", "group", "split"])
    else:
        if not root.is_file():
            raise InputDataError(
                f"dataset '{cfg.name}': CSV {root} not found; 'path' must be a CSV with columns "
                f"{cfg.path_column},{cfg.label_column}[,{cfg.group_column}]"
            )
        table = pd.read_csv(root, keep_default_na=False)
        if cfg.query:
            try:
                table = table.query(cfg.query)
            except Exception as exc:
                raise InputDataError(
                    f"dataset '{cfg.name}': query {cfg.query!r} failed on {root}: {exc}"
                ) from exc
        needed = (cfg.path_column, cfg.label_column, *cfg.meta_columns)
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise InputDataError(
                f"dataset '{cfg.name}': {root} lacks column(s) {missing}; found "
                f"{list(table.columns)}. Set path_column/label_column/meta_columns in its config"
            )
        group = table[cfg.group_column].astype(str) if cfg.group_column in table.columns else ""
        split = table[cfg.split_column].astype(str) if cfg.split_column in table.columns else ""
        table = pd.DataFrame(
            {
                "path": [
                    str(p if Path(p).is_absolute() else root.parent / p)
                    for p in table[cfg.path_column].astype(str)
                ],
                "label": table[cfg.label_column].astype(str),
                "group": group,
                "split": split,
                **{f"meta_{c}": table[c].astype(str).to_numpy() for c in cfg.meta_columns},
            }
        )
    if table.empty:
        raise InputDataError(f"dataset '{cfg.name}': no images found under {root}")
    check_labels(
        table["label"].tolist(),
        table["path"].tolist(),
        source=f"dataset '{cfg.name}' ({root})",
        key=f"datasets.{cfg.name}",
        declared=cfg.classes,
    )
    absent = [p for p in table["path"] if not Path(p).is_file()]
    if absent:
        raise InputDataError(
            f"dataset '{cfg.name}': {len(absent)} listed image(s) do not exist, e.g. {absent[0]}"
        )
    return table.reset_index(drop=True)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Bytes -> uint8 RGB (H, W, 3); grey is replicated, transparency composited on white."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputDataError(f"cannot decode image {name}: not a readable PNG/JPEG/TIFF/BMP")
    if img.dtype.kind == "f":  # float images (exports of normalised arrays): 0-1 or 0-255
        finite = np.isfinite(img)
        if not finite.all():
            raise InputDataError(
                f"image {name}: {100 * (1 - finite.mean()):.0f}% of its pixels are NaN or "
                "infinite (a failed export or a normalisation that divided by zero). Re-export "
                "it as 8-bit PNG/TIFF, or remove it from the collection."
            )
        top = 1.0 if img.max() <= 1.0 else 255.0
        img = np.clip(np.round(img * (255.0 / top)), 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:  # 16-bit images: scale to 8 bits
        img = (img / (np.iinfo(img.dtype).max / 255.0)).astype(np.uint8)
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        bgr, a = img[..., :3].astype(np.float32), img[..., 3:4].astype(np.float32) / 255
        img = (bgr * a + 255 * (1 - a)).astype(np.uint8)
    return cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)


def fit_patch(img: np.ndarray, cfg: DatasetConfig) -> np.ndarray:
    """Centre crop to the configured field of view, then resize to ``patch_px``.

    With ``mpp`` and ``patch_um`` the crop is ``patch_um`` micrometres (padded with the image's
    border colour when the image is smaller); otherwise the largest centred square.
    """
    h, w = img.shape[:2]
    if cfg.mpp is not None and cfg.patch_um is not None:
        side = max(int(round(cfg.patch_um / cfg.mpp)), 1)
    else:
        side = min(h, w)
    if side > h or side > w:
        py, px = max(side - h, 0), max(side - w, 0)
        img = cv2.copyMakeBorder(
            img, py // 2, py - py // 2, px // 2, px - px // 2, cv2.BORDER_REPLICATE
        )
        h, w = img.shape[:2]
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = img[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if side > cfg.patch_px else cv2.INTER_LINEAR
    return cv2.resize(crop, (cfg.patch_px, cfg.patch_px), interpolation=interp)


def pixel_hash(img: np.ndarray) -> int:
    """A 64-bit fingerprint of an image's decoded pixels and shape: the same for one picture
    saved under two names or in two lossless formats, whatever the patch settings."""
    h = hashlib.blake2b(digest_size=8)
    h.update(np.asarray(img.shape, np.int64).tobytes())
    h.update(np.ascontiguousarray(img).tobytes())
    return int.from_bytes(h.digest(), "little")


def iter_patches(
    table: pd.DataFrame, cfg: DatasetConfig, digest: hashlib._Hash
) -> Iterator[tuple[np.ndarray, int]]:
    """Decode and fit every image in order, feeding names and bytes into ``digest``; yields
    each patch and its source image's :func:`pixel_hash`."""
    for path in table["path"]:
        data = Path(path).read_bytes()
        digest.update(Path(path).name.encode())
        digest.update(data)
        img = decode_image(data, path)
        yield fit_patch(img, cfg), pixel_hash(img)
