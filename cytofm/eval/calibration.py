"""Calibration: does a probability of 0.9 mean 90%?

* **Temperature scaling** (Guo et al. 2017): one scalar T per trained model, fitted on the
  validation items by minimising the negative log-likelihood of ``softmax(log p / T)``; it
  changes the confidence, never the predicted class. Patch protocols fit it on the task's
  validation split (the rows that chose C or the learning rate); attention MIL on each fold's
  inner validation slides (those that stopped its training early).
* **Expected calibration error** (top label, 15 equal-width confidence bins): the weighted mean
  gap between the accuracy and the mean confidence of each bin, before and after scaling;
  reliability diagrams draw the bins.
* **Split-conformal prediction sets** (optional, ``evaluate.conformal_alpha``): the least
  ambiguous set-valued classifier. With the score 1 - p(true class) on the n calibration items
  (validation rows set apart by ``evaluate.conformal_share``, never used to choose C, the
  learning rate or the temperature), the threshold q is their ceil((n + 1)(1 - alpha))-th
  smallest score; a test item's set holds every class with p >= 1 - q. Coverage is guaranteed
  to be at least 1 - alpha on average when calibration and test items are exchangeable; the
  empirical coverage and mean set size on test are reported.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "N_BINS",
    "apply_temperature",
    "calibration_metrics",
    "calibration_table",
    "conformal_threshold",
    "ece",
    "fit_temperature",
    "reliability",
    "summarise_calibration",
]

N_BINS = 15
_EPS = 1e-12


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(p, np.float64), _EPS, None))


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: the probabilities of logits divided by T."""
    z = _log(proba) / float(temperature)
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _nll(y: np.ndarray, proba: np.ndarray) -> float:
    return float(-_log(proba[np.arange(len(y)), y]).mean())


def fit_temperature(y_val: np.ndarray, proba_val: np.ndarray) -> float:
    """T minimising the validation NLL, searched over log T in [-3, 3] (T in 0.05-20) by a
    golden-section search; 1.0 when there is nothing to fit on (no items, or a single class
    predicted with certainty)."""
    y_val = np.asarray(y_val, np.int64)
    if len(y_val) == 0:
        return 1.0
    logp = _log(proba_val)

    def nll(log_t: float) -> float:
        z = logp / math.exp(log_t)
        z -= z.max(1, keepdims=True)
        lse = np.log(np.exp(z).sum(1))
        return float((lse - z[np.arange(len(y_val)), y_val]).mean())

    lo, hi = -3.0, 3.0
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):  # the bracket shrinks to 6 x 0.618^60: far below any visible change
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    best = (lo + hi) / 2
    return float(math.exp(best)) if nll(best) < nll(0.0) else 1.0


def _bins(proba: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    conf = proba.max(1)
    return conf, np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)


def ece(y: np.ndarray, proba: np.ndarray, weights: np.ndarray | None = None, n_bins: int = N_BINS):
    """Top-label expected calibration error; with ``weights`` (resamples, n), one per row."""
    y = np.asarray(y, np.int64)
    conf, b = _bins(np.asarray(proba, np.float64), n_bins)
    gap = (proba.argmax(1) == y) - conf
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, np.float64)
    onehot = np.eye(n_bins)[b]  # (n, bins)
    per_bin = (w * gap) @ onehot  # (resamples, bins): summed accuracy - confidence
    out = np.abs(per_bin).sum(1) / np.maximum(w.sum(1), _EPS)
    return float(out[0]) if weights is None else out


def reliability(y: np.ndarray, proba: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin: mean confidence, accuracy and count (NaN where empty)."""
    y = np.asarray(y, np.int64)
    conf, b = _bins(np.asarray(proba, np.float64), n_bins)
    correct = (proba.argmax(1) == y).astype(float)
    count = np.bincount(b, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, conf, n_bins) / count
        acc = np.bincount(b, correct, n_bins) / count
    return {"confidence": mean_conf, "accuracy": acc, "count": count}


def conformal_threshold(y_val: np.ndarray, proba_val: np.ndarray, alpha: float) -> float:
    """q of the least-ambiguous sets: a class is in a test item's set when p >= 1 - q (1.0,
    every class, when the validation items are too few for 1 - alpha)."""
    y_val = np.asarray(y_val, np.int64)
    n = len(y_val)
    rank = math.ceil((n + 1) * (1 - alpha))  # the rank-th smallest score, 1-based
    if n == 0 or rank > n:
        return 1.0
    scores = 1.0 - np.asarray(proba_val, np.float64)[np.arange(n), y_val]
    return float(np.sort(scores)[rank - 1])


def calibration_metrics(
    y_test: np.ndarray,
    probas: list[np.ndarray],
    calibrated: list[np.ndarray] | None,
    weights: np.ndarray,
    *,
    y_calib: np.ndarray | None = None,
    calib_probas: list[np.ndarray] | None = None,
    alpha: float = 0.0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric -> (per-seed values, seed-mean on each resample of ``weights``): ECE and NLL
    before and after temperature scaling and, with the calibration rows' probabilities and
    ``alpha``, the conformal sets' coverage and mean size."""
    y = np.asarray(y_test, np.int64)
    rows = np.arange(len(y))
    series: dict[str, list[tuple[float, np.ndarray]]] = {}

    def add(name: str, whole: float, boot: np.ndarray) -> None:
        series.setdefault(name, []).append((whole, boot))

    for i, p in enumerate(probas):
        p = np.asarray(p, np.float64)
        add("ece", ece(y, p), ece(y, p, weights))
        nll = -_log(p[rows, y])
        add("nll", float(nll.mean()), weights @ nll / weights.sum(1))
        if calibrated is not None:
            c = np.asarray(calibrated[i], np.float64)
            add("ece_scaled", ece(y, c), ece(y, c, weights))
            nll = -_log(c[rows, y])
            add("nll_scaled", float(nll.mean()), weights @ nll / weights.sum(1))
        if alpha > 0 and calib_probas is not None and y_calib is not None and len(y_calib):
            q = conformal_threshold(y_calib, calib_probas[i], alpha)
            sets = p >= 1.0 - q - 1e-12
            covered = sets[rows, y].astype(float)
            size = sets.sum(1).astype(float)
            add("coverage", float(covered.mean()), weights @ covered / weights.sum(1))
            add("set_size", float(size.mean()), weights @ size / weights.sum(1))
    return {
        name: (np.array([v for v, _ in vals]), np.mean([b for _, b in vals], axis=0))
        for name, vals in series.items()
    }


def summarise_calibration(
    y_test,
    probas,
    calibrated=None,
    temperatures=None,
    groups=None,
    *,
    y_calib=None,
    calib_probas=None,
    alpha: float = 0.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Mean over seeds, std and 95% interval (test items bootstrapped, whole groups where
    given, plus the seed spread; :func:`cytofm.eval.metrics.interval`) of each calibration
    metric; ``temperature``: the fitted T (mean and spread over seeds and folds)."""
    from cytofm.eval.metrics import _resample_weights, interval

    rng = np.random.default_rng([seed, 4245])
    weights = _resample_weights(len(y_test), groups, n_boot, rng)
    got = calibration_metrics(
        y_test,
        probas,
        calibrated,
        weights,
        y_calib=y_calib,
        calib_probas=calib_probas,
        alpha=alpha,
    )
    out: dict[str, dict[str, Any]] = {}
    for name, (vals, boot) in got.items():
        mean = float(vals.mean())
        upper = float(np.asarray(probas[0]).shape[1]) if name == "set_size" else None
        if name.startswith("nll"):
            upper = float("inf")
        out[name] = {
            "mean": mean,
            "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
            **interval(mean, boot, vals, bounds=(0.0, upper if upper is not None else 1.0)),
            "per_seed": vals.tolist(),
            "n_seeds": len(vals),
        }
    if temperatures is not None and len(np.ravel(temperatures)):
        t = np.asarray(temperatures, np.float64).ravel()
        out["temperature"] = {
            "mean": float(t.mean()),
            "std": float(t.std(ddof=1)) if len(t) > 1 else 0.0,
            "range": [float(t.min()), float(t.max())],
            "per_seed": t.tolist(),
            "n_seeds": len(t),
        }
    return out


def calibration_table(result_jsons, alpha: float = 0.0, n_boot: int = 1000):
    """Long table (``LONG_COLUMNS``) of every result block with predictions: ECE and NLL before
    and after temperature scaling, the temperatures (their range in the interval columns) and,
    for ``alpha`` > 0 where calibration rows were set apart, conformal coverage and set
    size."""
    import pandas as pd

    from cytofm.eval.predictions import LONG_COLUMNS, long_rows, result_blocks

    rows = []
    for res, _, key, pred in result_blocks(result_jsons):
        metrics = summarise_calibration(
            pred["y_test"],
            pred["blocks"][key],
            pred["calibrated"].get(key),
            pred["temperatures"].get(key),
            pred["groups"],
            y_calib=pred.get("y_calib"),
            calib_probas=pred.get("calib", {}).get(key),
            alpha=alpha,
            n_boot=n_boot,
        )
        rows += long_rows(res, key, metrics)
    return pd.DataFrame(rows, columns=LONG_COLUMNS)
