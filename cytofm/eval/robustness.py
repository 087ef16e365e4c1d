"""Do a backbone's features encode the laboratory more than the cell?

For a task with a ``batch`` column (the stain protocol, site, scanner or preparation of each
image), on one backbone's cached features:

* **batch-leak probe**: the task's linear probe (standardised logistic regression, C chosen on
  the validation rows) trained on the training rows to predict the batch instead of the class,
  scored by balanced accuracy on the test rows next to chance (1 / number of batch values) and
  next to the same probe predicting the class. A backbone whose batch accuracy is far above
  chance carries the batch in its features, whatever its class accuracy.
* **robustness index** (PathoROB, Kömen et al. 2025; de Jong et al. 2025): over each image's
  k nearest neighbours by cosine similarity (``evaluate.knn.k``; neighbours from the image's
  own group, i.e. its slide or patient, are left out, as they share both), SO counts neighbours
  of the same class from another batch value and OS neighbours of another class from the same
  batch value; RI = sum SO / (sum SO + sum OS). 1: neighbourhoods follow biology only; 0.5: the
  batch weighs as much as the class; below 0.5: the batch dominates.

Intervals: bootstrap of the test rows (probes) or of all rows (RI), whole groups where the task
has them (one seed: nothing else varies).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cytofm.eval.linear import fit_linear, full_proba
from cytofm.eval.metrics import _resample_weights, interval, weighted_balanced_f1

__all__ = ["MAX_RI_ROWS", "batch_probe", "neighbour_counts", "robustness_index"]

MAX_RI_ROWS = 20_000  # rows the neighbour search covers (a fixed, seeded subsample beyond)


def batch_probe(
    features: np.ndarray,
    target: np.ndarray,
    split,
    groups: np.ndarray | None,
    *,
    Cs,
    max_iter: int,
    n_boot: int,
    names: list[str],
) -> dict[str, Any]:
    """The linear probe predicting ``target`` (integer codes of ``names``): test balanced
    accuracy with its interval, chance and the C chosen on validation."""
    clf, C, _ = fit_linear(
        features[split.train],
        target[split.train],
        features[split.val],
        target[split.val],
        Cs=list(Cs),
        class_names=names,
        max_iter=max_iter,
    )
    y = target[split.test]
    pred = full_proba(clf, features[split.test], len(names)).argmax(1)
    ones = np.ones((1, len(y)))
    value = float(weighted_balanced_f1(y, pred, len(names), ones)[0][0])
    rng = np.random.default_rng([0, 4246])
    boot = weighted_balanced_f1(
        y, pred, len(names), _resample_weights(len(y), groups, n_boot, rng)
    )[0]
    return {
        "balanced_accuracy": value,
        **interval(value, boot, np.array([value])),
        "chance": 1.0 / len(set(y.tolist()) | set(target[split.train].tolist())),
        "C": C,
        "n_values": len(names),
    }


def neighbour_counts(
    features: np.ndarray, labels: np.ndarray, batch: np.ndarray, groups: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many of its k nearest neighbours (cosine; its own group left out) are of
    the same class from another batch value (SO), and of another class from the same batch
    value (OS)."""
    x = np.asarray(features, np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    k = min(k, n - 1)
    so, os_ = np.zeros(n), np.zeros(n)
    for start in range(0, n, 1024):  # similarities a block of rows at a time: bounded memory
        rows = np.arange(start, min(start + 1024, n))
        sim = x[rows] @ x.T
        sim[groups[rows][:, None] == groups[None, :]] = -np.inf  # itself and its group
        near = np.argpartition(-sim, kth=min(k, n - 1) - 1, axis=1)[:, :k]
        valid = np.take_along_axis(sim, near, axis=1) > -np.inf
        same_class = labels[near] == labels[rows][:, None]
        same_batch = batch[near] == batch[rows][:, None]
        so[rows] = (valid & same_class & ~same_batch).sum(1)
        os_[rows] = (valid & ~same_class & same_batch).sum(1)
    return so, os_


def robustness_index(
    features: np.ndarray,
    labels: np.ndarray,
    batch: np.ndarray,
    groups: np.ndarray | None,
    *,
    k: int,
    n_boot: int,
    max_rows: int = MAX_RI_ROWS,
) -> dict[str, Any]:
    """RI = sum SO / (sum SO + sum OS) over the rows (a seeded subsample of ``max_rows`` beyond
    that), with its bootstrap interval."""
    n = len(labels)
    rows = np.arange(n)
    if n > max_rows:
        rows = np.sort(np.random.default_rng(0).choice(n, max_rows, replace=False))
    g = np.asarray(groups)[rows] if groups is not None else rows.astype(str)
    so, os_ = neighbour_counts(features[rows], labels[rows], batch[rows], g, k)
    total = so.sum() + os_.sum()
    value = float(so.sum() / total) if total > 0 else float("nan")
    rng = np.random.default_rng([0, 4247])
    w = _resample_weights(len(rows), g if groups is not None else None, n_boot, rng)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (w @ so) / (w @ so + w @ os_)
    return {
        "robustness_index": value,
        **interval(value, boot, np.array([value])),
        "k": int(min(k, len(rows) - 1)),
        "rows": len(rows),
        "so_per_row": float(so.mean()),
        "os_per_row": float(os_.mean()),
    }
