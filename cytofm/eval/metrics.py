"""Classification metrics, their mean and spread over seeds, and bootstrap 95% intervals.

Every protocol ends in the same thing: for each seed, the true labels of the test rows and a
probability per class. :func:`classification_metrics` scores one such prediction;
:func:`summarise` pools the seeds: mean and standard deviation over seeds, and a bootstrap CI
of the seed-mean that resamples test rows (the same resample for every seed, so the interval
reflects the finite test set, not seed noise counted twice).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
    roc_auc_score,
)

__all__ = ["SCALARS", "classification_metrics", "macro_auroc", "summarise"]

SCALARS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


def macro_auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """One-vs-rest AUROC averaged over the classes present in ``y_true`` (NaN if fewer than 2).

    Equal to scikit-learn's ``roc_auc_score(..., multi_class='ovr', average='macro')`` when every
    class is present; unlike it, it still answers on a bootstrap resample that lacks a class.
    """
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    return float(np.mean([roc_auc_score(y_true == c, proba[:, c]) for c in present]))


def _scalars(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """The four scalars with scikit-learn (the reference implementation)."""
    y_pred = proba.argmax(1)
    present = np.unique(y_true)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(_quiet(balanced_accuracy_score, y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0)
        ),
        "auroc": macro_auroc(y_true, proba),
    }


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


def _fast_scalars(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """The same four scalars in plain numpy, for the thousands of bootstrap resamples.

    Tested equal to :func:`_scalars`. Balanced accuracy and macro-F1 average over the classes
    present in ``y_true``; AUROC is the Mann-Whitney statistic with tied scores counted half.
    """
    n = proba.shape[1]
    y_pred = proba.argmax(1)
    cm = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    rows, cols, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    present = rows > 0
    recall = tp[present] / rows[present]
    f1 = 2 * tp[present] / (rows[present] + cols[present])
    aucs = []
    if present.sum() >= 2:
        for c in np.flatnonzero(present):
            ranks = rankdata(proba[:, c])
            pos = y_true == c
            n_pos, n_neg = int(pos.sum()), int((~pos).sum())
            aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return {
        "accuracy": float(tp.sum() / len(y_true)),
        "balanced_accuracy": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "auroc": float(np.mean(aucs)) if aucs else float("nan"),
    }


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> dict:
    """Scalars plus per-class recall and the confusion matrix (rows: truth, cols: prediction)."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    n = len(class_names)
    if proba.shape != (len(y_true), n):
        raise ValueError(f"proba has shape {proba.shape}, expected ({len(y_true)}, {n})")
    y_pred = proba.argmax(1)
    recall = recall_score(y_true, y_pred, labels=range(n), average=None, zero_division=0)
    counts = np.bincount(y_true, minlength=n)
    out = _scalars(y_true, proba)
    out["per_class_recall"] = {
        name: (float(r) if counts[i] else None)
        for i, (name, r) in enumerate(zip(class_names, recall, strict=True))
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=range(n)).tolist()
    out["n_test"] = int(len(y_true))
    return out


def summarise(
    y_true: np.ndarray,
    probas: list[np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Mean and std over seeds of each scalar, and a percentile bootstrap 95% CI of the mean.

    ``probas`` holds one (n_test, n_classes) array per seed, all on the same test rows.
    """
    y_true = np.asarray(y_true)
    per_seed = [_scalars(y_true, p) for p in probas]
    rng = np.random.default_rng([seed, 4242])
    boot = {k: [] for k in SCALARS}
    n = len(y_true)
    for _ in range(n_boot):
        rows = rng.integers(0, n, size=n)
        vals = [_fast_scalars(y_true[rows], p[rows]) for p in probas]
        for k in SCALARS:
            boot[k].append(np.nanmean([v[k] for v in vals]))
    out = {}
    for k in SCALARS:
        vals = np.array([s[k] for s in per_seed], dtype=float)
        b = np.array(boot[k], dtype=float)
        b = b[np.isfinite(b)]
        out[k] = {
            "mean": float(np.mean(vals)),
            "std": float(np.std(vals)),
            "ci95": [float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))]
            if len(b)
            else [float("nan"), float("nan")],
            "per_seed": vals.tolist(),
        }
    return out
