"""Export the teacher backbone for timm, and load it back from the local files only.

``model.safetensors`` holds the ViT's state dict (no pickles); ``config.json`` holds the timm
architecture and its arguments plus the preprocessing the weights expect (input size, mean,
std, and the micrometres per pixel and field of view of the training patches).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file
from torch import nn

__all__ = ["export_backbone", "load_backbone", "read_backbone_config"]


def export_backbone(
    vit: nn.Module,
    out_dir: str | Path,
    *,
    arch: str,
    model_args: dict[str, Any],
    img_size: int,
    patch_size: int,
    mean: list[float],
    std: list[float],
    patch_mpp: float | None,
    patch_um: float | None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    from cytofm.ssl.model import resolve_arch

    # written as timm names it (a cytofm preset resolved), so timm alone can load the folder
    arch, model_args = resolve_arch(arch, model_args)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in vit.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architecture": arch,
        "num_classes": 0,
        "num_features": int(vit.num_features),
        "model_args": {
            **model_args,
            "img_size": img_size,
            "patch_size": patch_size,
            "dynamic_img_size": True,
        },
        "pretrained_cfg": {
            "input_size": [3, img_size, img_size],
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        },
        # outside pretrained_cfg, whose keys timm checks when the folder is loaded from a hub
        "patch_geometry": {"mpp": patch_mpp, "patch_um": patch_um},
        "provenance": provenance or {},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def read_backbone_config(model_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "config.json").read_text())


def load_backbone(model_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """``timm.create_model`` from the exported files, strict: every key must match."""
    model_dir = Path(model_dir)
    cfg = read_backbone_config(model_dir)
    pcfg = dict(cfg["pretrained_cfg"])
    overlay = {
        "file": str(model_dir / "model.safetensors"),
        "custom_load": False,  # some ViT tags default to timm's npz loader
        "input_size": tuple(pcfg["input_size"]),
        "mean": tuple(pcfg["mean"]),
        "std": tuple(pcfg["std"]),
        "num_classes": 0,
        "crop_pct": pcfg.get("crop_pct", 1.0),
        "interpolation": pcfg.get("interpolation", "bilinear"),
    }
    model = timm.create_model(
        cfg["architecture"],
        pretrained=True,
        num_classes=0,
        pretrained_cfg_overlay=overlay,
        **cfg["model_args"],
    )
    return model.to(device).eval()
