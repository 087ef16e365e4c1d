"""The cell-level model a lab keeps: a cell task's linear probe, trained for use.

The evaluation's linear protocol chooses the L2 strength ``C`` on the validation rows and scores
the test rows; the final head is then refitted with that ``C`` on the training and validation
rows together (the test rows stay out, so the evaluation's figure still describes it). It is
saved as safetensors (the standardisation and the logistic regression's weights, nothing
pickled) with a JSON card: classes, C, rows used, the test metrics of the evaluated model, and
what a slide's features must match to be scored by it (backbone architecture and weights,
preprocessing, patch geometry), as :mod:`cytofm.eval.mil_model` does for slide models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cytofm.errors import InputDataError

__all__ = ["CellHead", "fit_cell_head", "label_cells", "load_cell_head", "save_cell_head"]

HEAD_FILE, CARD_FILE = "head.safetensors", "head.json"
CARD_FORMAT = 1


class CellHead:
    """Standardise, then a logistic regression: class probabilities (N, C) of features."""

    def __init__(self, mean, scale, coef, intercept, class_index, n_classes: int):
        self.mean = np.asarray(mean, np.float64)
        self.scale = np.asarray(scale, np.float64)
        self.coef = np.asarray(coef, np.float64)  # (K, D); K = 1 for two classes
        self.intercept = np.asarray(intercept, np.float64)
        self.class_index = np.asarray(class_index, np.int64)  # fitted class -> task class
        self.n_classes = int(n_classes)

    @classmethod
    def from_sklearn(cls, pipeline, n_classes: int) -> CellHead:
        scaler, lr = pipeline[0], pipeline[-1]
        return cls(scaler.mean_, scaler.scale_, lr.coef_, lr.intercept_, lr.classes_, n_classes)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        logits = z @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:  # two classes: one logit for the second
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            fitted = np.stack([1 - p1, p1], 1)
        else:
            logits -= logits.max(1, keepdims=True)
            e = np.exp(logits)
            fitted = e / e.sum(1, keepdims=True)
        out = np.zeros((len(z), self.n_classes))
        out[:, self.class_index] = fitted
        return out

    def tensors(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": self.intercept,
            "class_index": self.class_index,
        }


def fit_cell_head(features, labels, split, classes, linear, metric: str):
    """(head, C, validation scores, test metrics of the model fitted on the training rows):
    C chosen as the linear protocol chooses it, then refitted on training + validation."""
    from cytofm.eval.linear import fit_linear, fit_standardised_logistic, full_proba
    from cytofm.eval.metrics import classification_metrics

    x, y = np.asarray(features, np.float32), np.asarray(labels, np.int64)
    clf, C, scores = fit_linear(
        *(x[split.train], y[split.train], x[split.val], y[split.val]),
        Cs=list(linear.Cs), class_names=list(classes), metric=metric, max_iter=linear.max_iter,
    )  # fmt: skip
    test = {}
    if len(split.test):
        proba = full_proba(clf, x[split.test], len(classes))
        test = classification_metrics(y[split.test], proba, list(classes))
    rows = np.concatenate([split.train, split.val])
    final = fit_standardised_logistic(x[rows], y[rows], C, linear.max_iter)
    return CellHead.from_sklearn(final, len(classes)), C, scores, test, rows


def save_cell_head(out_dir: str | Path, head: CellHead, card: Mapping[str, Any]) -> Path:
    from safetensors.numpy import save_file

    from cytofm.provenance import file_sha256

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(head.tensors(), str(out_dir / HEAD_FILE))
    full = {"format": CARD_FORMAT, **card, "weights_sha256": file_sha256(out_dir / HEAD_FILE)}
    (out_dir / CARD_FILE).write_text(json.dumps(full, indent=1, default=str) + "\n")
    return out_dir


def load_cell_head(head_dir: str | Path) -> tuple[CellHead, dict[str, Any]]:
    """(head, card) of a ``cell_head`` job's folder, checked against the card's checksum."""
    from safetensors.numpy import load_file

    from cytofm.provenance import file_sha256

    head_dir = Path(head_dir)
    if not (head_dir / CARD_FILE).is_file():
        raise InputDataError(
            f"{head_dir} holds no {CARD_FILE}: give the folder a `cell_head` job wrote "
            "(results/eval/<task>/<backbone>/linear_head)"
        )
    card = json.loads((head_dir / CARD_FILE).read_text())
    if file_sha256(head_dir / HEAD_FILE) != card.get("weights_sha256"):
        raise InputDataError(
            f"{head_dir / HEAD_FILE} does not match the checksum in its card: the folder was "
            "changed after it was written; rerun its `cell_head` job"
        )
    t = load_file(str(head_dir / HEAD_FILE))
    head = CellHead(t["mean"], t["scale"], t["coef"], t["intercept"], t["class_index"],
                    len(card["classes"]))  # fmt: skip
    return head, card


def label_cells(head: CellHead, card: Mapping[str, Any], features, attention) -> tuple:
    """Each cell's class probabilities (N, C) and the slide's make-up: the share of cells
    predicted in each class, and each class's share of the attention (how much of what the
    slide model looked at the head calls that class)."""
    feats = np.asarray(features, np.float32)
    classes = list(card["classes"])
    if len(feats) == 0:
        return np.zeros((0, len(classes))), {"task": card["task"], "classes": classes}
    proba = head.predict_proba(feats)
    predicted = np.bincount(proba.argmax(1), minlength=len(classes)) / len(feats)
    weights = np.asarray(attention, np.float64)
    weighted = (weights[:, None] * proba).sum(0) / max(weights.sum(), 1e-12)
    return proba, {
        "task": card["task"],
        "classes": classes,
        "fraction": dict(zip(classes, predicted.tolist(), strict=True)),
        "attention_weighted": dict(zip(classes, weighted.tolist(), strict=True)),
        "head_sha256": card["weights_sha256"],
    }
