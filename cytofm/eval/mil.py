"""Gated attention MIL (Ilse et al. 2018) over a slide's cached cell features.

A slide is a bag of instances (cell or tile features); only the slide carries a label. Bags stay
a list of per-slide arrays in memory; a mini-batch of bags is zero-padded with a mask only when it
is used, so memory is bounded by ``batch_bags`` x the longest bag of the batch, not by the cohort.
Padded instances get zero attention, so a padded bag gives the same prediction as the bag alone,
and the attention-weighted mean makes the prediction independent of instance order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from cytofm.errors import InputDataError

if TYPE_CHECKING:
    from cytofm.config import MilConfig

__all__ = ["GatedABMIL", "check_bags", "grouped_folds", "pad_bags", "predict_mil", "train_mil"]


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
        # instance standardisation, set from the training bags (identity until then)
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))

    def set_standardisation(self, bags: Sequence[np.ndarray]) -> None:
        """Per-dimension mean/std over every instance of ``bags`` (the training bags)."""
        n, total, total_sq = 0, 0.0, 0.0
        for b in bags:
            b = np.asarray(b, dtype=np.float64)
            n += len(b)
            total = total + b.sum(0)
            total_sq = total_sq + (b**2).sum(0)
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
        self.feat_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feat_std.copy_(torch.as_tensor(np.where(std > 1e-6, std, 1.0), dtype=torch.float32))

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
        h = self.embed((x - self.feat_mean) / self.feat_std)
        scores = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h)))
        scores = scores.squeeze(-1).masked_fill(~mask, float("-inf"))
        attention = torch.softmax(scores, dim=1)
        pooled = torch.einsum("bn,bnd->bd", attention, h)
        return self.head(pooled), attention


def check_bags(
    bags: Mapping[str, np.ndarray] | Sequence[tuple[str, np.ndarray]],
) -> list[tuple[str, np.ndarray]]:
    """(slide, (n_i, D) features) pairs, checked: no empty bag, one feature size.

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
    return [(str(s), f) for s, f in items]


def _collate(bags: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(b) for b in bags)
    x = torch.zeros(len(bags), longest, bags[0].shape[1])
    mask = torch.zeros(len(bags), longest, dtype=torch.bool)
    for i, feats in enumerate(bags):
        x[i, : len(feats)] = torch.as_tensor(np.asarray(feats)).float()
        mask[i, : len(feats)] = True
    return x, mask


def pad_bags(
    bags: Mapping[str, np.ndarray] | Sequence[tuple[str, np.ndarray]],
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Bags of (n_i, D) features -> zero-padded (B, max n, D), mask (B, max n), slide ids."""
    items = check_bags(bags)
    x, mask = _collate([f for _, f in items])
    return x, mask, [s for s, _ in items]


@torch.no_grad()
def predict_mil(
    model: GatedABMIL, bags: Sequence[np.ndarray], index: Sequence[int], batch_bags: int = 8
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Class probabilities (len(index), C) and each bag's attention (unpadded)."""
    model.eval()
    probas, attention = [], []
    index = list(index)
    for start in range(0, len(index), batch_bags):
        chunk = [bags[i] for i in index[start : start + batch_bags]]
        x, mask = _collate(chunk)
        logits, attn = model(x, mask)
        probas.append(torch.softmax(logits, 1).numpy())
        attention += [attn[j, : len(b)].numpy() for j, b in enumerate(chunk)]
    n_classes = model.head.out_features
    return (np.concatenate(probas) if probas else np.zeros((0, n_classes))), attention


def _loss(model, bags, y, index, weight, batch_bags) -> float:
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(index), batch_bags):
            idx = index[start : start + batch_bags]
            x, mask = _collate([bags[i] for i in idx])
            logits, _ = model(x, mask)
            total += float(nn.functional.cross_entropy(logits, y[idx], weight, reduction="sum"))
    return total / len(index)


def train_mil(
    bags: Sequence[np.ndarray],
    labels: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    n_classes: int,
    mil: MilConfig,
    *,
    seed: int = 0,
) -> tuple[GatedABMIL, dict]:
    """Train on the ``train`` bags with the settings of ``mil`` (``evaluate.mil``), stop early
    on the validation loss (best epoch kept).

    Instances are standardised with the training bags' per-dimension mean and std. The best
    epoch is chosen among epochs >= ``min_epochs`` and training stops ``patience`` epochs after
    it: on a handful of validation slides the cross-entropy rises while the model is still
    becoming confident, so an unbounded early stop would keep an untrained model. ``balance``
    weights the loss by inverse class frequency of the training bags, so a rare slide class is
    not ignored. Deterministic on CPU given ``seed``. Without validation bags it trains
    ``max_epochs``.
    """
    max_epochs, min_epochs, patience = mil.max_epochs, mil.min_epochs, mil.patience
    batch_bags = mil.batch_bags
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = GatedABMIL(bags[0].shape[1], n_classes, mil.hidden, mil.attn_dim, mil.dropout)
    model.set_standardisation([bags[i] for i in train])
    opt = torch.optim.AdamW(model.parameters(), lr=mil.lr, weight_decay=mil.weight_decay)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    train = np.asarray(train, dtype=np.int64)
    val = np.asarray(val, dtype=np.int64)
    weight = None
    if mil.balance:
        counts = np.bincount(np.asarray(labels)[train], minlength=n_classes).astype(float)
        weight = torch.as_tensor(
            np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0),
            dtype=torch.float32,
        )
    best = (float("inf"), None, -1)
    history = []
    for epoch in range(max_epochs):
        model.train()
        order = train[torch.randperm(len(train), generator=gen).numpy()]
        for start in range(0, len(order), batch_bags):
            idx = order[start : start + batch_bags]
            x, mask = _collate([bags[i] for i in idx])
            logits, _ = model(x, mask)
            loss = nn.functional.cross_entropy(logits, y[idx], weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if len(val) == 0:
            continue
        model.eval()
        val_loss = _loss(model, bags, y, val, weight, batch_bags)
        history.append(val_loss)
        if epoch + 1 < min(min_epochs, max_epochs):
            continue
        if val_loss < best[0] - 1e-6:
            best = (val_loss, {k: v.clone() for k, v in model.state_dict().items()}, epoch)
        elif epoch - best[2] >= patience:
            break
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    return model, {"best_epoch": best[2], "epochs": len(history) or max_epochs, "val_loss": history}


def grouped_folds(labels, groups, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) slide indices per fold, stratified by label, no patient in both."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    groups = np.asarray([str(g) for g in groups])
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise InputDataError(
            f"{n_groups} patients for {n_folds} folds; lower the number of folds or add slides"
        )
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(te)) for tr, te in folds.split(labels, labels, groups)]
