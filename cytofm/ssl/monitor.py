"""Training monitors: collapse indicators and a kNN probe on a labelled held-out set."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.nn import functional as F

from cytofm.store import as_str_array

__all__ = ["KnnSet", "effective_rank", "embed", "knn_probe", "teacher_entropies"]


@torch.no_grad()
def teacher_entropies(probs: torch.Tensor) -> tuple[float, float]:
    """Mean per-sample entropy and entropy of the batch-mean distribution (nats).

    Collapse to one prototype drives both towards 0; collapse to uniform drives the first to
    log K. Healthy training keeps the first well below the second.
    """
    p = probs.float().clamp(min=1e-12)
    per_sample = float(-(p * p.log()).sum(-1).mean())
    mean = p.mean(0)
    return per_sample, float(-(mean * mean.log()).sum())


@torch.no_grad()
def effective_rank(x: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of centred embeddings (RankMe)."""
    x = x.float() - x.float().mean(0, keepdim=True)
    if len(x) < 2:
        return 1.0
    s = torch.linalg.svdvals(x)
    p = s / s.sum().clamp(min=1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@dataclasses.dataclass
class KnnSet:
    """Labelled patches split into a reference and a query part (by group when given)."""

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,)
    is_query: np.ndarray  # (N,) bool

    @classmethod
    def from_arrays(cls, images, labels, groups, seed: int = 0) -> KnnSet:
        rng = np.random.default_rng([seed, 23])
        groups = as_str_array(groups)
        if len(set(groups)) > 1 and not (groups == "").all():
            uniq = np.unique(groups)
            query_groups = set(rng.permutation(uniq)[: max(len(uniq) // 2, 1)])
            is_query = np.array([g in query_groups for g in groups])
        else:
            is_query = rng.random(len(labels)) < 0.5
        return cls(np.asarray(images), np.asarray(labels), is_query)


@torch.no_grad()
def embed(model, images: np.ndarray, mean, std, size: int, device, batch: int = 256):
    """[CLS]/pooled features of uint8 (N, H, W, 3) images resized to ``size``."""
    model.eval()
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i : i + batch]).to(device).permute(0, 3, 1, 2).float() / 255
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        out.append(model((x - m) / s).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def knn_probe(model, data: KnnSet, mean, std, size: int, k: int, device) -> float:
    """Balanced accuracy of a cosine kNN (majority of k) from reference to query patches."""
    from sklearn.metrics import balanced_accuracy_score

    feats = F.normalize(embed(model, data.images, mean, std, size, device), dim=-1)
    ref, qry = feats[~data.is_query], feats[data.is_query]
    y_ref, y_qry = data.labels[~data.is_query], data.labels[data.is_query]
    sims = qry @ ref.T
    top = sims.topk(min(k, len(ref)), dim=1).indices.numpy()
    votes = y_ref[top]
    pred = np.array([np.bincount(v, minlength=int(data.labels.max()) + 1).argmax() for v in votes])
    return float(balanced_accuracy_score(y_qry, pred))
