"""Label trees: metrics at every level of a class hierarchy, how far wrong the mistakes are, and
screening operating points.

A task's ``hierarchy`` (config) groups its classes into a tree, e.g. the Bethesda system::

    hierarchy:
      negative: [NILM]
      abnormal:
        low_grade: [ASC-US, LSIL]
        high_grade: [ASC-H, HSIL, SCC]
    screening: abnormal

A node maps to a list of classes or to further nodes; every class of the task appears exactly
once; a mapping of coarse names to lists of fine classes is the one-level case. From each
evaluation's test probabilities (one array per seed), per result block:

* **per level** (level 1: the root's children; the last level: the classes), balanced accuracy
  and macro-F1 of the coarse prediction, the node whose classes' probabilities sum highest (a
  class above the level's depth stands for itself);
* **mistake severity**: over the wrongly classified items, the mean number of tree edges between
  the true and the predicted class (2: siblings), and the share of mistakes that cross the
  root (a wrong answer at level 1: for Bethesda, an abnormal cell called negative or the
  reverse);
* **screening**: the summed probability of the ``screening`` node's classes as the score. An
  operating point is a threshold chosen where a laboratory would choose it, before the test
  set is seen: on the validation rows, the lowest threshold whose false-positive share among
  validation negatives stays within 10% (and 5%). The test rows are then scored at that
  threshold: sensitivity (``sensitivity_at_90_specificity``) and the specificity actually
  reached on test (``specificity_at_90_threshold``), which may fall short of 90%. Without
  validation probabilities (leave-one-out tasks pool several validation sets) no operating
  point is reported: one read off the test ROC would be tuned on the rows it scores.

Each value is the mean over seeds with the 95% interval of :func:`cytofm.eval.metrics.interval`
(test items bootstrapped, whole groups where the task has them, plus the seed-to-seed spread).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cytofm.config.sections import check_hierarchy_spec
from cytofm.eval.metrics import _resample_weights, interval, weighted_balanced_f1
from cytofm.eval.predictions import LONG_COLUMNS, long_rows, result_blocks

__all__ = [
    "SPECIFICITIES",
    "LabelTree",
    "check_hierarchy_spec",
    "hierarchy_metrics",
    "hierarchy_table",
    "screening_threshold",
]

SPECIFICITIES = (0.90, 0.95)


class LabelTree:
    """A task's classes arranged in a tree: each class's path from the root's child down to
    the class itself."""

    def __init__(self, spec: Mapping, classes: Sequence[str], screening: str = ""):
        check_hierarchy_spec(spec, "hierarchy")
        self.classes = [str(c) for c in classes]
        paths: dict[str, tuple[str, ...]] = {}
        nodes: list[str] = []

        def walk(sub: Mapping, prefix: tuple[str, ...]) -> None:
            for node, children in sub.items():
                nodes.append(node)
                if isinstance(children, Mapping):
                    walk(children, (*prefix, node))
                    continue
                for leaf in children:
                    if leaf in paths:
                        raise ValueError(f"hierarchy: class {leaf!r} is listed twice")
                    paths[leaf] = (*prefix, node, leaf)

        walk(spec, ())
        unknown = sorted(set(paths) - set(self.classes))
        missing = [c for c in self.classes if c not in paths]
        if unknown or missing:
            raise ValueError(
                f"hierarchy: its classes must be the task's {self.classes}; "
                + (f"not classes of the task: {unknown}; " if unknown else "")
                + (f"missing: {missing}" if missing else "")
            )
        clash = sorted({n for n in nodes if nodes.count(n) > 1 or n in paths})
        if clash:
            raise ValueError(f"hierarchy: node names must be unique and not class names: {clash}")
        self.paths = [paths[c] for c in self.classes]
        self.depth = max(len(p) for p in self.paths)
        self.screening = screening
        if screening:
            self.positive = np.array([screening in p for p in self.paths])
            if screening not in nodes and screening not in paths:
                raise ValueError(
                    f"screening: {screening!r} is not a node or class of the hierarchy "
                    f"(nodes: {nodes})"
                )
            if self.positive.all():
                raise ValueError(f"screening: {screening!r} holds every class; nothing is negative")

    def level(self, depth: int) -> tuple[list[str], np.ndarray]:
        """Names of the nodes at ``depth`` (1 = the root's children) and each class's node
        there (a class above that depth stands for itself)."""
        at = [p[min(depth, len(p)) - 1] for p in self.paths]
        names = list(dict.fromkeys(at))
        return names, np.array([names.index(a) for a in at])

    def distances(self) -> np.ndarray:
        """(C, C) tree edges between classes: up to their lowest common ancestor and down."""
        n = len(self.paths)
        out = np.zeros((n, n), np.int64)
        for i, a in enumerate(self.paths):
            for j, b in enumerate(self.paths):
                common = 0
                while common < min(len(a), len(b)) and a[common] == b[common]:
                    common += 1
                out[i, j] = len(a) + len(b) - 2 * common
        return out

    def describe(self) -> list[str]:
        """The tree as indented lines (for the report)."""
        lines: list[str] = []
        seen: set[tuple[str, ...]] = set()
        for path in self.paths:
            for d in range(len(path)):
                if path[: d + 1] not in seen:
                    seen.add(path[: d + 1])
                    lines.append("  " * d + path[d])
        return lines


def screening_threshold(score: np.ndarray, positive: np.ndarray, spec: float) -> float:
    """The lowest threshold t (a score > t is called positive) whose false-positive share
    among the negatives is at most 1 - ``spec``; NaN without negatives and positives."""
    negatives = np.sort(score[~positive])[::-1]
    if len(negatives) == 0 or positive.sum() == 0:
        return float("nan")
    allowed = int(np.floor((1 - spec) * len(negatives) + 1e-9))  # false positives allowed
    return float(negatives[allowed]) if allowed < len(negatives) else -np.inf


def _at_threshold(score: np.ndarray, positive: np.ndarray, w: np.ndarray, t: float):
    """(sensitivity, specificity) at threshold ``t`` per row of weights ``w``."""
    called = (score > t).astype(float)
    wp, wn = w[:, positive], w[:, ~positive]
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = wp @ called[positive] / wp.sum(1)
        spec = wn @ (1 - called[~positive]) / wn.sum(1)
    return sens, spec


def _per_seed_values(
    tree: LabelTree, y: np.ndarray, proba: np.ndarray, w: np.ndarray, thresholds=None
):
    """metric -> values (one per row of ``w``) for one seed's probabilities; ``thresholds``:
    specificity -> the screening threshold chosen on validation for this seed."""
    values: dict[str, np.ndarray] = {}
    for depth in range(1, tree.depth + 1):
        names, index = tree.level(depth)
        coarse = proba @ np.eye(len(names))[index]  # the node's classes' probabilities summed
        ba, f1 = weighted_balanced_f1(index[y], coarse.argmax(1), len(names), w)
        values[f"level{depth}_balanced_accuracy"] = ba
        values[f"level{depth}_macro_f1"] = f1
    pred = proba.argmax(1)
    dist = tree.distances()[y, pred].astype(float)
    wrong = (pred != y).astype(float)
    crosses = np.array([tree.paths[a][0] != tree.paths[b][0] for a, b in zip(y, pred, strict=True)])
    with np.errstate(invalid="ignore", divide="ignore"):
        n_wrong = w @ wrong
        values["mistake_distance"] = np.where(n_wrong > 0, (w @ (dist * wrong)) / n_wrong, np.nan)
        values["mistakes_across_root"] = np.where(
            n_wrong > 0, (w @ (crosses * wrong)) / n_wrong, np.nan
        )
    if tree.screening and thresholds:
        score = proba[:, tree.positive].sum(1)
        positive = tree.positive[y]
        for spec, t in thresholds.items():
            if np.isnan(t):
                continue
            sens, reached = _at_threshold(score, positive, w, t)
            values[f"sensitivity_at_{round(spec * 100)}_specificity"] = sens
            values[f"specificity_at_{round(spec * 100)}_threshold"] = reached
    return values


def _thresholds(tree: LabelTree, y_val, val_proba) -> dict[float, float] | None:
    """specificity -> threshold chosen on the validation rows (None without them)."""
    if not tree.screening or y_val is None or val_proba is None or len(y_val) == 0:
        return None
    score = np.asarray(val_proba, np.float64)[:, tree.positive].sum(1)
    positive = tree.positive[np.asarray(y_val, np.int64)]
    return {spec: screening_threshold(score, positive, spec) for spec in SPECIFICITIES}


def hierarchy_metrics(
    tree: LabelTree,
    y_true: np.ndarray,
    probas: list[np.ndarray],
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    y_val: np.ndarray | None = None,
    val_probas: list[np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """metric -> mean over seeds, std, 95% CI (see the module) and per-seed values; screening
    operating points need each seed's validation probabilities (``y_val``, ``val_probas``)."""
    y = np.asarray(y_true, np.int64)
    rng = np.random.default_rng([seed, 4244])
    boots = _resample_weights(len(y), groups, n_boot, rng)
    ones = np.ones((1, len(y)))
    cuts = [
        _thresholds(tree, y_val, None if val_probas is None else val_probas[i])
        for i in range(len(probas))
    ]
    per_seed = [
        _per_seed_values(tree, y, np.asarray(p, np.float64), ones, c)
        for p, c in zip(probas, cuts, strict=True)
    ]
    booted = [
        _per_seed_values(tree, y, np.asarray(p, np.float64), boots, c)
        for p, c in zip(probas, cuts, strict=True)
    ]
    out = {}
    for name in per_seed[0]:
        vals = np.array([v[name][0] for v in per_seed])
        if not np.isfinite(vals).all():  # no mistakes, or one side empty: nothing to say
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # resamples with nothing to score
            boot = np.nanmean(np.stack([b[name] for b in booted]), axis=0)
        mean = float(vals.mean())
        bounds = (0.0, float(tree.distances().max())) if name == "mistake_distance" else (0, 1)
        out[name] = {
            "mean": mean,
            "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
            **interval(mean, boot, vals, bounds=bounds),
            "per_seed": vals.tolist(),
            "n_seeds": len(vals),
        }
    return out


def hierarchy_table(
    result_jsons, spec: Mapping, screening: str = "", n_boot: int = 1000
) -> pd.DataFrame:
    """One row per (result, block, metric) of every result with predictions (long format)."""
    rows = []
    for res, _, key, pred in result_blocks(result_jsons):
        try:
            tree = LabelTree(spec, res["classes"], screening)
        except ValueError as e:
            raise ValueError(f"evaluate.tasks.{res['task']}: {e}") from None
        metrics = hierarchy_metrics(
            tree, pred["y_test"], pred["blocks"][key], pred["groups"], n_boot=n_boot,
            y_val=pred["y_val"], val_probas=pred["val"].get(key),
        )  # fmt: skip
        rows += long_rows(res, key, metrics)
    return pd.DataFrame(rows, columns=LONG_COLUMNS)
