"""The evaluation harness: a protocol run over a task's label budgets and seeds, on its split
or on each of its leave-one-out folds, as the result blocks of a result JSON.

For every budget (all labels, k shots per class, a share of the training rows) and seed, the
training rows are sampled from the split's training part and the protocol (see
:mod:`cytofm.eval.protocols`) predicts the test rows; a budget some class is too small for is
skipped with the reason. A block holds the runs' test metrics, the temperature fitted on each
run's validation probabilities, and the mean/std over seeds with a bootstrap 95% CI
(:func:`cytofm.eval.metrics.summarise`). Leave-one-out folds are pooled: every row is tested
once, when its value is held out, and each held-out value keeps its own score. The per-seed
probabilities go to the predictions file (:mod:`cytofm.eval.predictions`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from cytofm.eval.calibration import apply_temperature, fit_temperature
from cytofm.eval.metrics import classification_metrics, summarise
from cytofm.eval.predictions import block_key, run_seeds, save_predictions
from cytofm.eval.protocols import EvalInputs, Protocol
from cytofm.eval.splits import (
    Split,
    has_groups,
    hold_out_calibration,
    sample_fraction,
    sample_shots,
)
from cytofm.eval.tasks import task_folds

if TYPE_CHECKING:
    from cytofm.config import BackboneSpec, EvalConfig, TaskConfig

__all__ = ["INTERVAL_NOTE", "Evaluated", "evaluate_folds", "evaluation_folds", "result_head"]

log = logging.getLogger(__name__)

INTERVAL_NOTE = (
    "ci95 covers test items (bootstrap of the seed-mean) and seeds (t on the seed-to-seed "
    "standard error), added in quadrature; ci95_test_only is the bootstrap part alone."
)


def evaluation_folds(task: TaskConfig, cfg: EvalConfig, data) -> list[tuple[str | None, Split]]:
    """The task's folds (:func:`cytofm.eval.tasks.task_folds`); a single split sets its
    conformal calibration rows apart."""
    folds = task_folds(task, data)
    if folds[0][0] is None:  # one split: conformal sets calibrate on rows selection never saw
        folds = [(None, _with_calibration(folds[0][1], task, cfg, data))]
    return folds


def _with_calibration(split: Split, task: TaskConfig, cfg: EvalConfig, data) -> Split:
    out = hold_out_calibration(
        split, data["labels"], data["groups"], share=cfg.conformal_share, seed=task.split_seed
    )
    if cfg.conformal_share > 0 and not len(out.calib):
        log.warning(
            "task %s: %d validation rows are too few to set %.0f%% apart for conformal sets; "
            "none are computed",
            task.name, len(split.val), 100 * cfg.conformal_share,
        )  # fmt: skip
    return out


def result_head(task, spec, protocol, data, split, g_test, exposure) -> dict[str, Any]:
    """What a result JSON says before its results: the task, backbone, split, what the
    backbone's pretraining saw of the task (``exposure``) and the intervals."""
    return {
        "task": task.name,
        "dataset": task.dataset,
        "backbone": spec.name,
        "protocol": protocol,
        "classes": data["classes"],
        "split": split.to_dict(),
        "test_rows": split.test.tolist(),
        "val_rows": split.val.tolist(),
        "calib_rows": split.calib.tolist(),
        "backbone_kind": spec.kind,
        "exposure": exposure,
        "interval": INTERVAL_NOTE
        + (" Test rows are resampled by group." if g_test is not None else ""),
    }


def _block(
    y_test,
    probas,
    runs,
    cfg: EvalConfig,
    shots=None,
    seed_independent=False,
    fraction=None,
    groups=None,
) -> dict:
    return {
        "shots": shots,
        "fraction": fraction,
        "seed_independent": seed_independent,
        "summary": summarise(y_test, probas, n_boot=cfg.bootstrap, seed=0, groups=groups),
        "runs": runs,
    }


def _groups_of(data: dict[str, Any], rows: np.ndarray) -> np.ndarray | None:
    """Groups (patients) of ``rows`` when the task has them (as the split decides), else
    None: the bootstrap then resamples whole groups."""
    if data["groups"] is None:
        return None
    g = data["groups"][rows]
    return g if has_groups(g) else None


def _run_split(kind, task, cfg, spec, data, feats, pretrained_dir, split: Split):
    """The protocol on one split of the task."""
    inputs = EvalInputs(
        task, cfg, spec, data["labels"], data["classes"], split, data["store"], feats,
        pretrained_dir,
    )  # fmt: skip
    return _run_protocol(kind(inputs), _groups_of(data, split.test))


class _Collected:
    """A protocol's result blocks and predictions as its runs come in: per block key, the test
    probabilities per seed and, where the protocol gives validation probabilities, those, the
    temperature fitted on them and the scaled test probabilities."""

    def __init__(self, inp: EvalInputs, g_test):
        self.inp, self.g_test = inp, g_test
        self.y_test, self.y_val = inp.labels[inp.split.test], inp.labels[inp.split.val]
        self.blocks: list[dict] = []
        self.skipped: list[dict] = []
        self.predictions: dict[str, dict] = {
            "test": {}, "calibrated": {}, "temperatures": {}, "val": {}, "calib": {}
        }  # fmt: skip

    def run(self, p: np.ndarray, chosen: dict, **head) -> dict:
        """A run's record: its test metrics and the temperature fitted on its validation
        probabilities (those and the calibration rows' probabilities are kept aside for the
        predictions file, not the JSON)."""
        val = chosen.pop("val_proba", None)
        calib = chosen.pop("calib_proba", None)
        if val is not None:
            chosen = {**chosen, "temperature": fit_temperature(self.y_val, val), "_val": val}
        if calib is not None and len(calib):
            chosen["_calib"] = calib
        test = classification_metrics(self.y_test, p, self.inp.classes)
        return {**head, **chosen, "test": test}

    def block(self, probas, runs, **kw) -> None:
        self.blocks.append(
            _block(self.y_test, probas, runs, self.inp.cfg, groups=self.g_test, **kw)
        )
        key = block_key(kw.get("shots"), kw.get("fraction"))
        self.predictions["test"][key] = probas
        vals = [r.pop("_val", None) for r in runs]
        calib = [r.pop("_calib", None) for r in runs]
        if all(c is not None for c in calib):
            self.predictions["calib"][key] = calib
        if all(v is not None for v in vals):
            temps = [r["temperature"] for r in runs]
            self.predictions["val"][key] = vals
            self.predictions["temperatures"][key] = temps
            self.predictions["calibrated"][key] = [
                apply_temperature(p, t) for p, t in zip(probas, temps, strict=True)
            ]


def _run_protocol(proto: Protocol, g_test):
    """The protocol's seed-independent run and its label budgets over the task's seeds, as
    result blocks (metrics with CIs), skipped budgets (a class too small) and predictions."""
    inp = proto.inputs
    out = _Collected(inp, g_test)
    once = proto.once()
    if once is not None:
        out.block([once[0]], [out.run(*once, seed=None)], seed_independent=True)
    budgets = type(proto).budgets(inp.task, inp.cfg)
    if not budgets:
        return out.blocks, out.skipped, out.predictions
    proto.prepare()
    seeds = [int(s) for s in inp.task.seeds]
    bar = tqdm(
        total=len(budgets) * len(seeds),
        desc=f"{proto.name} {inp.spec.name} {inp.task.name}",
        mininterval=5,
    )
    for kind, amount in budgets:
        probas, runs, short = [], [], []
        for seed in seeds:
            if kind == "shots":
                n_classes = len(inp.classes)
                rows, short = sample_shots(inp.labels, inp.split.train, amount, seed, n_classes)
            else:
                rows = sample_fraction(inp.labels, inp.split.train, amount, seed)
            bar.update(1)
            if short:
                break
            p, chosen = proto.run(rows, seed, (kind, amount))
            probas.append(p)
            runs.append(out.run(p, chosen, seed=seed, train_rows=rows.tolist()))
        if short:
            out.skipped.append({"shots": amount, "reason": _short_reason(inp, short, amount)})
            reason = out.skipped[-1]["reason"]
            log.warning("task %s: %s-shot skipped: %s", inp.task.name, amount, reason)
            continue
        out.block(probas, runs, **{kind: amount})
        out.blocks[-1].update(proto.block_extra(runs))
    bar.close()
    return out.blocks, out.skipped, out.predictions


@dataclasses.dataclass
class Evaluated:
    """A protocol's results on the task's split, or pooled over its leave-one-out folds."""

    blocks: list[dict]
    skipped: list[dict]
    predictions: dict[str, dict]
    test_rows: np.ndarray  # in the order of the predictions
    groups: np.ndarray | None
    y_val: np.ndarray | None  # None: no single validation set
    head: dict[str, Any]  # result JSON keys that replace the single split's
    y_calib: np.ndarray | None = None  # the conformal calibration rows' labels, if any
    seeds: dict[str, list] = dataclasses.field(default_factory=dict)  # block key -> seeds

    def save(self, path, labels: np.ndarray) -> None:
        """The predictions file (see :mod:`cytofm.eval.predictions`)."""
        p = self.predictions
        save_predictions(
            path, labels[self.test_rows], self.groups, p["test"], calibrated=p["calibrated"],
            temperatures=p["temperatures"], y_val=self.y_val, val=p["val"],
            y_calib=self.y_calib, calib=p.get("calib"), test_rows=self.test_rows,
            seeds=self.seeds,
        )  # fmt: skip


def evaluate_folds(
    kind: type[Protocol],
    task: TaskConfig,
    cfg: EvalConfig,
    spec: BackboneSpec,
    data: dict[str, Any],
    folds: list[tuple[str | None, Split]],
    feats: np.ndarray | None = None,
    pretrained_dir=None,
) -> Evaluated:
    """Protocol ``kind`` on the task's split, or on each leave-one-out fold and pooled;
    ``feats``: the cached features of the dataset's rows (protocols that need them)."""
    run_on = functools.partial(_run_split, kind, task, cfg, spec, data, feats, pretrained_dir)
    return _evaluate_folds(run_on, folds, data, cfg, task)


def _evaluate_folds(evaluate, folds, data, cfg: EvalConfig, task: TaskConfig) -> Evaluated:
    labels = data["labels"]
    if folds[0][0] is None:
        split = folds[0][1]
        blocks, skipped, predictions = evaluate(split)
        groups = _groups_of(data, split.test)
        y_calib = labels[split.calib] if len(split.calib) else None
        return Evaluated(
            blocks, skipped, predictions, split.test, groups, labels[split.val], {}, y_calib,
            _block_seeds(blocks),
        )  # fmt: skip
    ev = _pool_folds([(v, split, *evaluate(split)) for v, split in folds], data, cfg, task)
    ev.seeds = _block_seeds(ev.blocks)
    return ev


def _block_seeds(blocks: list[dict]) -> dict[str, list]:
    """Block key -> the seed of each run, in order."""
    return {block_key(b["shots"], b["fraction"]): run_seeds(b) for b in blocks}


def _pool_folds(per_fold, data, cfg: EvalConfig, task: TaskConfig) -> Evaluated:
    """Leave-one-out: every row is tested once, when its value is held out; each budget's
    per-seed predictions are pooled over the folds and scored as one test set, and each held-out
    value's own balanced accuracy is kept (``held_out``). Budgets skipped in any fold are
    skipped."""
    test_rows = np.concatenate([split.test for _, split, *_ in per_fold])
    y, groups = data["labels"][test_rows], _groups_of(data, test_rows)
    preds: dict[str, dict] = {"test": {}, "calibrated": {}, "temperatures": {}, "val": {}}
    blocks = []
    for key in [k for k in per_fold[0][4]["test"] if all(k in f[4]["test"] for f in per_fold)]:
        parts = [
            (value, split, next(b for b in fb if block_key(b["shots"], b["fraction"]) == key), pf)
            for value, split, fb, _, pf in per_fold
        ]
        n = min(len(pf["test"][key]) for *_, pf in parts)
        probas = [np.concatenate([pf["test"][key][i] for *_, pf in parts]) for i in range(n)]
        first = parts[0][2]
        runs = [
            {
                "seed": first["runs"][i]["seed"],
                "folds": [
                    {"held_out": v, **{k: x for k, x in b["runs"][i].items() if k not in _BULKY}}
                    for v, _, b, _ in parts
                ],
                "test": classification_metrics(y, probas[i], data["classes"]),
            }
            for i in range(n)
        ]
        kw = {k: first[k] for k in ("shots", "fraction", "seed_independent")}
        blocks.append(_block(y, probas, runs, cfg, groups=groups, **kw))
        blocks[-1]["held_out"] = [
            {
                "value": v,
                "n_test": len(split.test),
                "balanced_accuracy": [b["runs"][i]["test"]["balanced_accuracy"] for i in range(n)],
            }
            for v, split, b, _ in parts
        ]
        preds["test"][key] = probas
        if all(key in pf["calibrated"] for *_, pf in parts):
            preds["calibrated"][key] = [
                np.concatenate([pf["calibrated"][key][i] for *_, pf in parts]) for i in range(n)
            ]
            preds["temperatures"][key] = [
                [pf["temperatures"][key][i] for *_, pf in parts] for i in range(n)
            ]
    skipped = [
        {**sk, "held_out": v} for v, _, _, fold_skipped, _ in per_fold for sk in fold_skipped
    ]
    head = _pooled_head(per_fold, test_rows, task)
    return Evaluated(blocks, skipped, preds, test_rows, groups, None, head)


def _pooled_head(per_fold, test_rows: np.ndarray, task: TaskConfig) -> dict[str, Any]:
    """The result JSON's split keys for leave-one-out folds."""
    return {
        "split": {
            "source": f"leave one out: {task.hold_out}",
            "n_train": int(np.mean([len(split.train) for _, split, *_ in per_fold])),
            "n_val": int(np.mean([len(split.val) for _, split, *_ in per_fold])),
            "n_test": len(test_rows),
            "folds": [{"held_out": v, **split.to_dict()} for v, split, *_ in per_fold],
        },
        "test_rows": test_rows.tolist(),
        **dict.fromkeys(("val_rows", "calib_rows")),  # one per fold: see "folds"
    }


_BULKY = ("test", "train_rows", "seed")  # per-fold run keys the pooled run does not repeat


def _short_reason(inp: EvalInputs, short, amount) -> str:
    tr = inp.split.train
    counts = ", ".join(f"'{inp.classes[c]}' ({int((inp.labels[tr] == c).sum())})" for c in short)
    return (
        f"class(es) {counts} have fewer than {amount} training examples; add images or "
        f"remove {amount} from evaluate.tasks.{inp.task.name}.shots"
    )
