"""A corpus of broken and awkward inputs, generated on demand (never committed as binaries).

Each writer makes one file of the kind users meet on shared drives: slides that are empty,
truncated, mislabelled or without resolution, blank glass, smears without nuclei, and images
and stores that are damaged.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import tifffile

# Vendor metadata a scanner writes into an Aperio SVS: none of it may reach tracking or the
# report. The file name itself carries a patient's name, as on many shared drives.
PHI = {
    "Date": "03/14/25",
    "Time": "09:26:53",
    "User": "op-jdoe-4411",
    "Barcode": "BC-PX-778812",
    "ScanScope ID": "SS-90210",
    "Filename": "DOE_JANE_19620314",
}
PHI_FILE_STEM = "DOE_JANE_19620314_PAP"


def smear(size: int = 1024, seed: int = 0, nuclei: bool = True, cells: int = 14) -> np.ndarray:
    """A small Pap-smear-like RGB field: pale cytoplasm with (optionally) dark nuclei."""
    rng = np.random.default_rng(seed)
    rgb = np.full((size, size, 3), 238, np.uint8)
    rgb += rng.integers(0, 4, rgb.shape, dtype=np.uint8)
    for _ in range(cells):
        x, y = (int(v) for v in rng.integers(60, size - 60, 2))
        r = int(rng.integers(28, 44))
        cv2.circle(rgb, (x, y), r, (226, 170, 190), -1)  # eosinophilic cytoplasm
        if nuclei:
            cv2.circle(rgb, (x, y), int(r * 0.3), (70, 50, 120), -1)  # haematoxylin nucleus
    return rgb


def blank(size: int = 1024, seed: int = 0) -> np.ndarray:
    """Empty glass: background colour and sensor noise only."""
    rng = np.random.default_rng(seed)
    return (np.full((size, size, 3), 240, np.int16) + rng.integers(-2, 3, (size, size, 3))).astype(
        np.uint8
    )


def write_svs(path: Path, rgb: np.ndarray, mpp: float = 0.25, meta: dict | None = None) -> Path:
    """An Aperio-style SVS (tiled JPEG TIFF whose description OpenSlide parses), 2 levels."""
    meta = PHI if meta is None else meta
    h, w = rgb.shape[:2]
    fields = "|".join(f"{k} = {v}" for k, v in {"AppMag": 40, "MPP": mpp, **meta}.items())
    head = f"Aperio Image Library v12.0.5 \r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90"
    desc = f"{head}|{fields}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            rgb,
            tile=(256, 256),
            photometric="rgb",
            compression="jpeg",
            description=desc,
            metadata=None,
        )
        small = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        tif.write(
            small,
            tile=(256, 256),
            photometric="rgb",
            compression="jpeg",
            description=f"Aperio Image Library v12.0.5 \r\n{w}x{h} -> {w // 2}x{h // 2} - |",
            metadata=None,
        )
    return path


def write_tiff_without_resolution(path: Path, rgb: np.ndarray) -> Path:
    """A tiled TIFF with no resolution tags and no vendor description."""
    tifffile.imwrite(
        path, rgb, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None
    )
    return path


def zero_byte(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncated(path: Path, keep: float = 0.5) -> Path:
    """A valid SVS cut short, as after an interrupted copy: the header survives, tiles do not."""
    write_svs(path, smear(seed=3))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def png_named_svs(path: Path) -> Path:
    ok, png = cv2.imencode(".png", smear(256))
    assert ok
    path.write_bytes(png.tobytes())
    return path


def text_named_tiff(path: Path) -> Path:
    path.write_text("slide scanned on 2025-03-14, see LIMS\n")
    return path


def nan_image(path: Path, size: int = 48) -> Path:
    """A float32 TIFF crop whose pixels are all NaN (a failed export or a normalisation by 0)."""
    tifffile.imwrite(path, np.full((size, size, 3), np.nan, np.float32))
    return path


def corrupt_chunk(store: Path, array: str = "images") -> Path:
    """Overwrite one chunk file of ``array`` with garbage bytes."""
    chunks = sorted(p for p in (store / array / "c").rglob("*") if p.is_file())
    assert chunks, f"{store}/{array} has no chunk files"
    chunks[0].write_bytes(b"\x00garbage" * 16)
    return chunks[0]


def corrupt_metadata(store: Path) -> Path:
    """Cut the store's root ``zarr.json`` in half."""
    meta = store / "zarr.json"
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])
    return meta


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
