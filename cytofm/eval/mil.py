"""Gated attention MIL (Ilse et al. 2018) over a slide's cached cell features.

A slide is a bag of instances (cell or tile features); only the slide carries a label. Bags of
different sizes are padded into a batch with a mask; padded instances get zero attention, so a
padded bag gives the same prediction as the bag alone, and the attention-weighted mean makes the
prediction independent of instance order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from cytofm.errors import InputDataError

__all__ = ["GatedABMIL", "pad_bags"]


class GatedABMIL(nn.Module):
    """h = MLP(x); a = softmax(w^T (tanh(V h) * sigmoid(U h))); logits = head(sum a h)."""

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden: int = 128,
        attn_dim: int = 64,
        dropout: float = 0.25,
    ):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attn_v = nn.Linear(hidden, attn_dim)
        self.attn_u = nn.Linear(hidden, attn_dim)
        self.attn_w = nn.Linear(attn_dim, 1)
        self.head = nn.Linear(hidden, n_classes)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, N, D) and ``mask`` (B, N) True for real instances -> (logits (B, C),
        attention (B, N), zero on padding)."""
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every bag needs at least one instance (mask all False)")
        h = self.embed(x)
        scores = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h)))
        scores = scores.squeeze(-1).masked_fill(~mask, float("-inf"))
        attention = torch.softmax(scores, dim=1)
        pooled = torch.einsum("bn,bnd->bd", attention, h)
        return self.head(pooled), attention


def pad_bags(
    bags: Mapping[str, np.ndarray] | Sequence[tuple[str, np.ndarray]],
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Bags of (n_i, D) features -> zero-padded (B, max n, D), mask (B, max n), slide ids.

    A bag with no instances is an error that names the slide: a slide without cells cannot be
    classified by its cells, and silently dropping it would change the cohort.
    """
    items = list(bags.items()) if isinstance(bags, Mapping) else list(bags)
    if not items:
        raise ValueError("no bags given")
    for slide, feats in items:
        if len(feats) == 0:
            raise InputDataError(
                f"slide '{slide}' has no instances (no cells were found or kept), so it cannot "
                "be a MIL bag; check its QC images and cell detection settings, or remove it "
                "from the task"
            )
    dims = {np.asarray(f).shape[1] for _, f in items}
    if len(dims) != 1:
        raise ValueError(f"bags have different feature sizes {sorted(dims)}")
    longest = max(len(f) for _, f in items)
    x = torch.zeros(len(items), longest, dims.pop())
    mask = torch.zeros(len(items), longest, dtype=torch.bool)
    for i, (_, feats) in enumerate(items):
        n = len(feats)
        x[i, :n] = torch.as_tensor(np.asarray(feats, dtype=np.float32))
        mask[i, :n] = True
    return x, mask, [str(s) for s, _ in items]
