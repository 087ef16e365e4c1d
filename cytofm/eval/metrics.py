"""Classification metrics, their mean and spread over seeds, and bootstrap 95% intervals.

Every protocol ends in the same thing: for each seed, the true labels of the test rows and a
probability per class. :func:`classification_metrics` scores one such prediction;
:func:`summarise` pools the seeds: mean and standard deviation over seeds, and a 95% CI of the
seed-mean that covers both sources of variation, the finite test set (a bootstrap of test rows,
or of whole patients where the task has groups; every seed scored on the same resample) and the
seeds (Student's t on the seed-to-seed spread). :func:`paired_difference` does the same for the
difference between two backbones on the same rows and seeds, with a p-value.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.stats import t as student_t
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
    roc_auc_score,
)

__all__ = [
    "SCALARS",
    "classification_metrics",
    "interval",
    "macro_auroc",
    "paired_difference",
    "run_units",
    "summarise",
    "weighted_balanced_f1",
]

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
    """The same four scalars in plain numpy (one resample; see :func:`_weighted_scalars`)."""
    scored = _weighted_scalars(np.asarray(y_true), proba, np.ones((1, len(y_true))))
    return {k: float(v[0]) for k, v in scored.items()}


def _weighted_scalars(
    y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """The four scalars on many bootstrap resamples at once.

    A resample is a row of ``weights`` (B, n): how often each test row was drawn. Scoring the
    weighted rows equals scoring the resampled rows (tested equal to :func:`_scalars`, the
    scikit-learn reference). Balanced accuracy and macro-F1 average over the classes present in
    the resample; AUROC is the Mann-Whitney statistic with tied scores counted half, from one
    sort per class for all resamples.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    k = proba.shape[1]
    y_pred = proba.argmax(1)
    cell = np.zeros((len(y_true), k * k))
    cell[np.arange(len(y_true)), y_true * k + y_pred] = 1.0
    cm = (weights @ cell).reshape(-1, k, k)  # (B, truth, prediction)
    rows, cols = cm.sum(2), cm.sum(1)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    present = rows > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / rows, 0.0)
        f1 = np.where(present, 2 * tp / (rows + cols), 0.0)
    n_present = present.sum(1)
    auc_sum = np.zeros(len(weights))
    for c in range(k):
        pos = y_true == c
        if not pos.any():
            continue
        _, inverse = np.unique(proba[:, c], return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
        w_sorted = weights[:, order]
        w_pos = np.add.reduceat(w_sorted * pos[order], starts, axis=1)  # (B, distinct scores)
        w_neg = np.add.reduceat(w_sorted * ~pos[order], starts, axis=1)
        below = np.cumsum(w_neg, axis=1) - w_neg  # negatives scored strictly lower
        n_pos, n_neg = w_pos.sum(1), w_neg.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (w_pos * (below + 0.5 * w_neg)).sum(1) / (n_pos * n_neg)
        auc_sum += np.where(present[:, c], auc, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": tp.sum(1) / weights.sum(1),
            "balanced_accuracy": recall.sum(1) / n_present,
            "macro_f1": f1.sum(1) / n_present,
            "auroc": np.where(n_present >= 2, auc_sum / np.maximum(n_present, 1), np.nan),
        }


def _boot_scalars(
    y_true: np.ndarray, probas: list[np.ndarray], weights: np.ndarray, block: int = 250
) -> list[dict[str, np.ndarray]]:
    """:func:`_weighted_scalars` of every seed's prediction, in blocks of resamples (memory)."""
    out = []
    for p in probas:
        parts = [
            _weighted_scalars(y_true, p, weights[i : i + block])
            for i in range(0, len(weights), block)
        ]
        out.append({k: np.concatenate([part[k] for part in parts]) for k in SCALARS})
    return out


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


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Column means of (seeds, resamples) over the finite values; NaN where there are none."""
    finite = np.isfinite(values)
    count = finite.sum(0)
    total = np.where(finite, values, 0.0).sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _resample_weights(n: int, groups: np.ndarray | None, n_boot: int, rng) -> np.ndarray:
    """Bootstrap resamples as draw counts per row (n_boot, n): rows drawn with replacement, or
    whole groups (patients) when the task has them, so rows of one patient move together."""
    weights = np.zeros((n_boot, n))
    if groups is None:
        for b in range(n_boot):
            weights[b] = np.bincount(rng.integers(0, n, size=n), minlength=n)
        return weights
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_groups = inverse.max() + 1
    for b in range(n_boot):
        picked = np.bincount(rng.integers(0, n_groups, size=n_groups), minlength=n_groups)
        weights[b] = picked[inverse]
    return weights


def run_units(per_seed: np.ndarray, clusters: np.ndarray | None = None) -> np.ndarray:
    """The independent units of a set of runs: the runs themselves, or, when ``clusters``
    names each run's pretraining checkpoint and there are several, each checkpoint's mean over
    its evaluation seeds (the seeds of one checkpoint are not independent draws of the recipe)."""
    per_seed = np.asarray(per_seed, dtype=float)
    if clusters is None:
        return per_seed
    clusters = np.asarray(clusters)
    labels = list(dict.fromkeys(clusters.tolist()))
    if len(labels) <= 1:
        return per_seed
    return np.array([per_seed[clusters == c].mean() for c in labels])


def interval(
    centre: float,
    boot: np.ndarray,
    per_seed: np.ndarray,
    bounds=(0.0, 1.0),
    clusters: np.ndarray | None = None,
) -> dict[str, Any]:
    """95% interval of a seed-mean from its sources of variation.

    Test items: the percentile bootstrap of the seed-mean over resampled rows (or groups), every
    seed scored on the same resample. Runs: the standard error of the mean over the
    independent units (:func:`run_units`: evaluation seeds, or pretraining checkpoints when
    ``clusters`` gives several, whose means carry their seeds' spread with them), scaled by
    Student's t with n_units - 1 degrees of freedom (wide for 3, as it should be). The two are
    added in quadrature on each side, so the interval reduces to the plain bootstrap when there
    is one run. It is clipped to the metric's range ``bounds``.
    """
    boot = boot[np.isfinite(boot)]
    units = run_units(per_seed, clusters)
    n = len(units)
    se_seed = float(np.std(units, ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    t_seed = float(student_t.ppf(0.975, n - 1)) if n > 1 else 0.0
    if len(boot):
        lo_t = max(centre - float(np.percentile(boot, 2.5)), 0.0)
        hi_t = max(float(np.percentile(boot, 97.5)) - centre, 0.0)
        se_test = float(np.std(boot, ddof=1)) if len(boot) > 1 else 0.0
    else:
        lo_t = hi_t = se_test = float("nan")
    seed_part = t_seed * se_seed
    low = max(centre - float(np.hypot(lo_t, seed_part)), bounds[0])
    high = min(centre + float(np.hypot(hi_t, seed_part)), bounds[1])
    return {
        "ci95": [low, high],
        "ci95_test_only": [centre - lo_t, centre + hi_t],
        "se_test": se_test,
        "se_seed": se_seed,
        "n_units": n,
    }


def summarise(
    y_true: np.ndarray,
    probas: list[np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Mean and std over seeds of each scalar, and a 95% CI of the mean that covers both the
    test items (bootstrap; whole ``groups`` resampled when given) and the seeds (t on the
    seed-to-seed spread); see :func:`interval`.

    ``probas`` holds one (n_test, n_classes) array per run, all on the same test rows;
    ``clusters`` (one label per run) names each run's pretraining checkpoint: with several, the
    checkpoints are the top level of the interval (``n_checkpoints``).
    """
    y_true = np.asarray(y_true)
    per_seed = [_scalars(y_true, p) for p in probas]
    rng = np.random.default_rng([seed, 4242])
    scored = _boot_scalars(y_true, probas, _resample_weights(len(y_true), groups, n_boot, rng))
    # the seed-mean on each resample; AUROC is NaN on a resample with one class (left out)
    boot = {k: _nanmean_rows(np.stack([v[k] for v in scored])) for k in SCALARS}
    out = {}
    for k in SCALARS:
        vals = np.array([s[k] for s in per_seed], dtype=float)
        mean = float(np.mean(vals))
        out[k] = {
            "mean": mean,
            "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            **interval(mean, np.array(boot[k], dtype=float), vals, clusters=clusters),
            "per_seed": vals.tolist(),
            "n_seeds": len(vals),
            "n_checkpoints": _n_checkpoints(clusters),
            "resampled": "groups" if groups is not None else "rows",
        }
    return out


def _n_checkpoints(clusters) -> int:
    return 1 if clusters is None else len(set(np.asarray(clusters).tolist()))


def paired_difference(
    y_true: np.ndarray,
    probas_a: list[np.ndarray],
    probas_b: list[np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Backbone A minus backbone B on the same test rows and seeds (seed i of A paired with
    seed i of B: the same training rows): mean difference, its standard error from both
    sources of variation (bootstrap of test rows or groups; spread of the paired differences
    over the independent units: seeds, or pretraining checkpoints when ``clusters`` names
    several, see :func:`run_units`), and from one t statistic (Welch-Satterthwaite degrees of
    freedom; normal when runs add nothing) a two-sided p-value and the 95% CI, which therefore
    agree: the CI excludes zero exactly when p < 0.05. ``ci95_bootstrap`` is the percentile
    construction of :func:`summarise`, for comparison.
    """
    if len(probas_a) != len(probas_b):
        raise ValueError(f"{len(probas_a)} vs {len(probas_b)} seeds: pair the same seeds")
    y_true = np.asarray(y_true)
    diff_seed = {
        k: np.array(
            [
                _scalars(y_true, a)[k] - _scalars(y_true, b)[k]
                for a, b in zip(probas_a, probas_b, strict=True)
            ]
        )
        for k in SCALARS
    }
    rng = np.random.default_rng([seed, 4243])
    weights = _resample_weights(len(y_true), groups, n_boot, rng)
    va, vb = _boot_scalars(y_true, probas_a, weights), _boot_scalars(y_true, probas_b, weights)
    boot = {
        k: _nanmean_rows(np.stack([x[k] - z[k] for x, z in zip(va, vb, strict=True)]))
        for k in SCALARS
    }
    out = {}
    for k in SCALARS:
        d = float(np.mean(diff_seed[k]))
        iv = interval(
            d, np.array(boot[k], dtype=float), diff_seed[k], bounds=(-1.0, 1.0), clusters=clusters
        )
        n = iv["n_units"]
        se = float(np.hypot(iv["se_test"], iv["se_seed"]))
        if n > 1 and iv["se_seed"] > 0:  # Welch-Satterthwaite: the seed part has n - 1 df
            df = se**4 / (iv["se_seed"] ** 4 / (n - 1))
        else:
            df = np.inf
        if not np.isfinite(se):
            p, lo, hi = float("nan"), float("nan"), float("nan")
        elif se == 0:
            p, lo, hi = (1.0 if d == 0 else 0.0), d, d
        else:
            # CI and p-value from one t statistic, so the CI excludes zero iff p < 0.05
            p = float(2 * student_t.sf(abs(d) / se, df))
            q = float(student_t.ppf(0.975, df))
            lo, hi = max(d - q * se, -1.0), min(d + q * se, 1.0)
        out[k] = {
            "difference": d,
            "ci95": [lo, hi],
            "ci95_bootstrap": iv["ci95"],
            "se_test": iv["se_test"],
            "se_seed": iv["se_seed"],
            "df": float(df),
            "p_value": p,
            "excludes_zero": bool(lo > 0 or hi < 0),
            "per_seed": diff_seed[k].tolist(),
            "n_checkpoints": _n_checkpoints(clusters),
        }
    return out


def weighted_balanced_f1(truth: np.ndarray, pred: np.ndarray, k: int, w: np.ndarray):
    """Balanced accuracy and macro-F1 (classes present in the truth or the predictions, as
    scikit-learn counts them) of weighted items, for each row of ``w`` (resamples, n)."""
    cm = np.stack([np.bincount(truth * k + pred, weights=wi, minlength=k * k) for wi in w])
    cm = cm.reshape(len(w), k, k)
    diag = np.diagonal(cm, axis1=1, axis2=2)
    rows, cols = cm.sum(2), cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without some class
        recall = np.where(rows > 0, diag / rows, np.nan)
        balanced = np.nanmean(recall, axis=1)
        present = (rows + cols) > 0
        f1 = np.where(present, 2 * diag / np.where(present, rows + cols, 1), np.nan)
        macro_f1 = np.nanmean(f1, axis=1)
    return balanced, macro_f1
