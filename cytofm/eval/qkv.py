"""Separate query, key and value projections for timm ViTs, so adapters can target each alone.

timm fuses the three projections of an attention block into one ``qkv`` Linear (dim -> 3 dim).
The LoRA protocol cytofm follows puts one adapter on the query and one on the value projection;
an adapter on the fused layer would also adapt the keys, with an update shared by all three.
:func:`split_qkv` replaces every fused ``qkv`` by three Linear modules registered on the attention
block itself (``blocks.3.attn.q``, ``.k``, ``.v``), whose weights are the rows of the fused one,
and leaves timm's own attention code to run unchanged: the block's ``qkv`` becomes a plain
callable that concatenates the three outputs, so nothing of the forward pass is re-implemented.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FusedView", "split_qkv"]


class FusedView:
    """What ``attn.qkv(x)`` returns after the split: ``cat([q(x), k(x), v(x)], -1)``.

    A plain object, not a module, so the projections appear once in ``named_modules`` (under the
    attention block) and peft sees ``attn.q`` and ``attn.v`` as the layers to adapt. It holds
    the block, not the layers, so adapters peft puts in place of ``attn.q`` are used, and a
    ``deepcopy`` of the model points at the copied block.
    """

    def __init__(self, attn: nn.Module):
        self.attn = attn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn
        return torch.cat([a.q(x), a.k(x), a.v(x)], dim=-1)

    def __repr__(self) -> str:
        return "FusedView(q, k, v)"


def _split_one(attn: nn.Module) -> None:
    fused: nn.Linear = attn.qkv
    dim = fused.in_features
    if fused.out_features % 3:
        raise ValueError(f"qkv projection of {type(attn).__name__} is not 3 x {dim} wide")
    width = fused.out_features // 3
    for i, name in enumerate(("q", "k", "v")):
        layer = nn.Linear(
            dim,
            width,
            bias=fused.bias is not None,
            device=fused.weight.device,
            dtype=fused.weight.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(fused.weight[i * width : (i + 1) * width])
            if fused.bias is not None:
                layer.bias.copy_(fused.bias[i * width : (i + 1) * width])
        layer.weight.requires_grad_(fused.weight.requires_grad)
        setattr(attn, name, layer)
    del attn.qkv  # unregister the fused module ...
    attn.qkv = FusedView(attn)  # ... and put the view where timm's forward looks for it


def split_qkv(model: nn.Module) -> list[str]:
    """Split every fused ``qkv`` Linear of ``model`` in place; returns the attention blocks'
    names. A model without one (already split, or no timm attention) is left as it is."""
    fused = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module._modules.get("qkv"), nn.Linear)
    ]
    for _, module in fused:
        _split_one(module)
    return [name for name, _ in fused]
