"""Batched feature extraction from a patch store's ``images`` array."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from cytofm.errors import InputDataError
from cytofm.eval.backbones import LoadedBackbone

__all__ = ["batches", "embed_array", "pick_device", "preprocess"]


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def preprocess(images: np.ndarray | torch.Tensor, bb: LoadedBackbone, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, S, S) at the backbone's input size."""
    x = torch.as_tensor(images).to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255
    if x.shape[-1] != bb.input_size or x.shape[-2] != bb.input_size:
        x = F.interpolate(
            x,
            size=(bb.input_size, bb.input_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    mean = torch.tensor(bb.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(bb.std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def batches(array, batch: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) over the first axis of a zarr or numpy array, ``batch`` rows at a time."""
    for start in range(0, array.shape[0], batch):
        yield start, np.asarray(array[start : start + batch])


@torch.no_grad()
def embed_array(
    bb: LoadedBackbone,
    images,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    desc: str = "embed",
) -> np.ndarray:
    """Pooled features (N, D) float32 of every image; bf16 autocast on GPU when asked."""
    device = torch.device(device)
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    bb.model.to(device).eval()
    n = images.shape[0]
    out = np.zeros((n, bb.model.num_features), np.float32)
    with tqdm(total=n, desc=desc, unit="img", mininterval=5) as bar:
        for start, rows in batches(images, batch_size):
            x = preprocess(rows, bb, device)
            finite = torch.isfinite(x).flatten(1).all(1)
            if not bool(finite.all()):
                bad = start + torch.nonzero(~finite).flatten().cpu().numpy()
                raise InputDataError(
                    f"{desc}: {len(bad)} image(s) (rows {bad[:5].tolist()}) are not finite after "
                    f"normalisation with mean {list(bb.mean)} and std {list(bb.std)}; the "
                    "backbone's std must be positive (check its config.json or the backbone's "
                    "'std' in config.yaml)"
                )
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                f = bb.model(x)
            out[start : start + len(rows)] = f.float().cpu().numpy()
            bar.update(len(rows))
    return out
