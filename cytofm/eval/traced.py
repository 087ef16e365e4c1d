"""A backbone built once per run and kept as a TorchScript copy next to its identity.

``results/backbones/<name>/`` holds ``backbone.json`` (identity, preprocessing, feature width,
the check of the copy) and ``model.torchscript.pt``, the model traced on CPU in fp32. Embedding
jobs on CPU load that copy with ``torch.jit.load``: no timm import (about 2 s of every job's
start-up, which dominates the many small jobs of a study of many slides) and no per-job hub
access. The copy is written only when it gives the eager model's features on fresh inputs at
two batch sizes; a model that cannot be traced (or is traced wrongly) gets no copy, and its jobs
build it as before. On GPU the jobs always build the eager model (bf16 autocast, the kernels
users tune) and check it is the same weights the folder names.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cytofm.eval.backbones import LoadedBackbone

__all__ = ["TRACED_FILE", "load_traced", "materialise_backbone", "read_backbone_card"]

log = logging.getLogger(__name__)

CARD_FILE = "backbone.json"
TRACED_FILE = "model.torchscript.pt"
CHECK_BATCHES = (1, 3)  # traced with 2 images: another count catches a batch size baked in
RTOL, ATOL = 1e-4, 1e-5


class _TracedBackbone(nn.Module):
    """A loaded TorchScript module with the ``num_features`` timm models carry."""

    def __init__(self, module: torch.jit.ScriptModule, num_features: int) -> None:
        super().__init__()
        self.module = module
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _check_trace(model: nn.Module, traced, size: int, seed: int = 0) -> float:
    """Largest |eager - traced| over fresh inputs; raises when they differ beyond tolerance."""
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.inference_mode():
        for n in CHECK_BATCHES:
            x = torch.randn(n, 3, size, size, generator=gen)
            want, got = model(x), traced(x)
            if want.shape != got.shape or not torch.allclose(want, got, rtol=RTOL, atol=ATOL):
                diff = (want - got).abs().max().item() if want.shape == got.shape else float("inf")
                raise ValueError(
                    f"traced copy differs from the model at batch size {n} "
                    f"(max |diff| {diff:.3g}, shapes {tuple(want.shape)} vs {tuple(got.shape)})"
                )
            worst = max(worst, (want - got).abs().max().item())
    return worst


def materialise_backbone(
    bb: LoadedBackbone, out_dir: str | Path, provenance: dict
) -> dict[str, Any]:
    """Write ``backbone.json`` and, when the trace reproduces the model, its TorchScript copy."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = bb.model.to("cpu").eval()
    size = int(bb.input_size)
    card: dict[str, Any] = {
        "identity": bb.identity,
        "preprocessing": bb.preprocessing,
        "num_features": int(model.num_features),
        "torchscript": None,
        "trace_check": None,
        "provenance": provenance,
    }
    if not getattr(model, "traceable", True):
        card["trace_check"] = {"error": "not traceable (not a network); jobs build it"}
        (out / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
        return card
    try:
        example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        with warnings.catch_warnings(), torch.no_grad():
            # timm's shape asserts warn while tracing; the check below is what decides
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, example, check_trace=False)
        worst = _check_trace(model, traced, size)
        torch.jit.save(traced, str(out / TRACED_FILE))
        card["torchscript"] = TRACED_FILE
        card["trace_check"] = {
            "batch_sizes": list(CHECK_BATCHES),
            "max_abs_diff": worst,
            "rtol": RTOL,
            "atol": ATOL,
        }
    except Exception as exc:  # untraceable or traced wrongly: jobs build the model instead
        card["trace_check"] = {"error": f"{exc.__class__.__name__}: {exc}"}
        log.warning(
            "backbone '%s' has no TorchScript copy (%s); embedding jobs will build it with "
            "timm, as on GPU",
            bb.identity.get("name"),
            card["trace_check"]["error"],
        )
    (out / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
    return card


def read_backbone_card(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        from cytofm.errors import InputDataError

        raise InputDataError(f"{path} not found; run the backbone rule for this backbone first")
    return json.loads(path.read_text())


def load_traced(folder: str | Path) -> LoadedBackbone | None:
    """The folder's TorchScript copy on CPU, or None when it has none."""
    card = read_backbone_card(folder)
    if not card.get("torchscript"):
        return None
    module = torch.jit.load(str(Path(folder) / card["torchscript"]), map_location="cpu")
    pre = card["preprocessing"]
    return LoadedBackbone(
        _TracedBackbone(module, card["num_features"]).eval(),
        int(pre["input_size"]),
        tuple(pre["mean"]),
        tuple(pre["std"]),
        dict(card["identity"]),
        pre.get("mpp"),
    )
