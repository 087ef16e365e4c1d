"""Detection quality against ground truth: one-to-one matching within a distance tolerance."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

__all__ = ["match_pairs", "match_points"]


def match_pairs(
    pred: np.ndarray, truth: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to true centres (Hungarian, distance <= ``tolerance``).

    Returns (pred indices, truth indices, distances) of the matched pairs.
    """
    pred = np.asarray(pred, float).reshape(-1, 2)
    truth = np.asarray(truth, float).reshape(-1, 2)
    empty = np.zeros(0, np.int64)
    if not (len(pred) and len(truth)):
        return empty, empty, np.zeros(0)
    # candidate pairs within the tolerance (explicit, so zero distances are kept)
    neighbours = cKDTree(truth).query_ball_tree(cKDTree(pred), tolerance)
    rows = np.array([i for i, js in enumerate(neighbours) for _ in js], dtype=np.int64)
    cols = np.array([j for js in neighbours for j in js], dtype=np.int64)
    if not len(rows):
        return empty, empty, np.zeros(0)
    ur, ri = np.unique(rows, return_inverse=True)
    uc, ci = np.unique(cols, return_inverse=True)
    big = tolerance * 10 + 1
    cost = np.full((len(ur), len(uc)), big)
    cost[ri, ci] = np.hypot(*(truth[rows] - pred[cols]).T)
    r, c = linear_sum_assignment(cost)
    ok = cost[r, c] <= tolerance
    return uc[c[ok]], ur[r[ok]], cost[r, c][ok]


def match_points(pred: np.ndarray, truth: np.ndarray, tolerance: float) -> dict[str, float]:
    """Match predicted to true centres one-to-one (Hungarian, distance <= ``tolerance``).

    Returns counts, recall, precision, F1 and the mean distance of matched pairs; the units are
    those of the inputs.
    """
    pred = np.asarray(pred, float).reshape(-1, 2)
    truth = np.asarray(truth, float).reshape(-1, 2)
    _, _, dist = match_pairs(pred, truth, tolerance)
    tp = len(dist)
    dists = dist.tolist()
    fp, fn = len(pred) - tp, len(truth) - tp
    recall = tp / len(truth) if len(truth) else float("nan")
    precision = tp / len(pred) if len(pred) else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else float("nan")
    return {
        "n_true": len(truth),
        "n_pred": len(pred),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "recall": recall,
        "precision": precision,
        "f1": f1,
        "mean_distance": float(np.mean(dists)) if dists else float("nan"),
    }
