"""Protocols on cached features: linear probe (regularisation chosen on val) and cosine kNN
with similarity-weighted votes."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cytofm.eval.metrics import classification_metrics

__all__ = ["fit_linear", "fit_standardised_logistic", "full_proba", "knn_proba", "select_score"]


def full_proba(clf, x: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` spread onto all ``n_classes`` columns (absent classes get 0)."""
    p = clf.predict_proba(x)
    out = np.zeros((len(x), n_classes))
    out[:, clf.classes_] = p
    return out


def select_score(y: np.ndarray, proba: np.ndarray, metric: str, class_names) -> float:
    return float(classification_metrics(y, proba, list(class_names))[metric])


def fit_standardised_logistic(x: np.ndarray, y: np.ndarray, C: float, max_iter: int):
    """Standardise, then an L2 logistic regression of strength ``C``."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def fit_linear(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    Cs: list[float],
    class_names: list[str],
    metric: str = "balanced_accuracy",
    max_iter: int = 1000,
):
    """Standardise, fit logistic regression for each C, keep the best C on the validation rows.

    Without validation rows the middle C is used. Returns (classifier, chosen C, {C: val score}).
    """
    n_classes = len(class_names)
    scores: dict[float, float] = {}
    best = None
    candidates = list(Cs) if len(y_val) else [sorted(Cs)[len(Cs) // 2]]
    for C in candidates:
        clf = fit_standardised_logistic(x_train, y_train, C, max_iter)
        if len(y_val):
            scores[C] = select_score(y_val, full_proba(clf, x_val, n_classes), metric, class_names)
            if best is None or scores[C] > scores[best[0]]:
                best = (C, clf)
        else:
            best = (C, clf)
    return best[1], best[0], scores


def knn_proba(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    k: int,
    n_classes: int,
    *,
    temperature: float = 0.07,
    chunk: int = 256,
) -> np.ndarray:
    """Cosine kNN with similarity-weighted votes (DINO's and eva's): each of the ``k`` nearest
    training rows adds ``exp(cosine similarity / temperature)`` to its class, and the votes are
    normalised to probabilities."""
    k = min(int(k), len(y_train))
    if temperature <= 0:
        raise ValueError(f"kNN temperature must be > 0, got {temperature}")
    y_train = np.asarray(y_train, np.int64)
    out = np.zeros((len(x_test), n_classes))
    if k == 0 or len(x_test) == 0:
        return out
    train = _unit(x_train)
    for start in range(0, len(x_test), chunk):
        sim = _unit(x_test[start : start + chunk]) @ train.T  # (chunk, n_train)
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # the k most similar
        s = np.take_along_axis(sim, nearest, axis=1)
        w = np.exp((s - s.max(1, keepdims=True)) / temperature)  # shifted: no overflow
        votes = out[start : start + len(sim)]
        np.add.at(votes, (np.arange(len(sim))[:, None], y_train[nearest]), w)
        votes /= votes.sum(1, keepdims=True)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
