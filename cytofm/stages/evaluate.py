"""Stage ``evaluate``: one task x one backbone x one protocol -> a result JSON.

Protocols ``linear``, ``knn`` and ``fewshot`` run on the cached features; ``lora`` fine-tunes
the backbone from the task's images. All share the task's split (given by the data, or derived
once from ``split_seed``, grouped by patient/slide/batch). The JSON holds every run's metrics,
the sampled training rows and seeds, the chosen hyper-parameters and validation scores, the
mean/std over seeds with a bootstrap 95% CI, and the resolved config.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cytofm.config import EvalConfig, TaskConfig
from cytofm.config.sections import KINDS_WITHOUT_NETWORK
from cytofm.errors import ConfigError, InputDataError
from cytofm.eval.backbones import BackboneSpec
from cytofm.eval.calibration import apply_temperature, fit_temperature
from cytofm.eval.metrics import classification_metrics, summarise
from cytofm.eval.predictions import block_key, run_seeds, save_predictions
from cytofm.eval.protocols import PROTOCOLS, EvalInputs, Protocol
from cytofm.eval.splits import (
    Split,
    check_groups_disjoint,
    given_split,
    has_groups,
    hold_out_calibration,
    leave_one_out,
    make_split,
    sample_fraction,
    sample_shots,
)
from cytofm.inductive import exposure
from cytofm.provenance import provenance
from cytofm.results import write_result
from cytofm.stages.context import JobContext
from cytofm.store import as_str_array, open_store

__all__ = ["dataset_column", "load_task_data", "run_evaluate", "task_folds", "task_split"]

log = logging.getLogger(__name__)

INTERVAL_NOTE = (
    "ci95 covers test items (bootstrap of the seed-mean) and seeds (t on the seed-to-seed "
    "standard error), added in quadrature; ci95_test_only is the bootstrap part alone."
)


def load_task_data(task: TaskConfig, dataset_store: str | Path) -> dict[str, Any]:
    """Labels, groups, optional given splits and class names of a task's dataset store."""
    ds = open_store(dataset_store)
    if task.label not in ds:
        raise InputDataError(
            f"task '{task.name}': {dataset_store} has no array '{task.label}' "
            f"(arrays: {sorted(ds.array_keys())}); set evaluate.tasks.{task.name}.label"
        )
    labels = np.asarray(ds[task.label][:]).astype(np.int64)
    classes = [str(c) for c in ds.attrs.get("classes", [])] or [
        str(c) for c in range(int(labels.max()) + 1)
    ]
    groups = as_str_array(ds[task.group][:]) if task.group in ds else None
    splits = as_str_array(ds["splits"][:]) if "splits" in ds else None
    return {"labels": labels, "groups": groups, "splits": splits, "classes": classes, "store": ds}


def dataset_column(task: TaskConfig, data: dict[str, Any], name: str) -> np.ndarray:
    """A per-row column of the task's dataset: ``groups``, or a meta column (site, stain...)."""
    if name == task.group and data["groups"] is not None:
        return data["groups"]
    ds = data["store"]
    for key in (f"meta_{name}", name):
        if key in ds:
            return as_str_array(ds[key][:])
    kept = list(ds.attrs.get("meta_columns", []))
    raise InputDataError(
        f"task '{task.name}': dataset '{task.dataset}' has no column '{name}' (its meta "
        f"columns: {kept}, and '{task.group}'). List it in datasets.{task.dataset}.meta_columns "
        "(a CSV column kept per image) and import it again, or name another column."
    )


def task_folds(task: TaskConfig, data: dict[str, Any]) -> list[tuple[str | None, Split]]:
    """The task's split as ``[(None, split)]``, or for ``split: leave_one_out`` one
    ``(held-out value, split)`` per value of ``hold_out``; every class must be in each
    training part (a held-out site may lack some classes)."""
    if task.split != "leave_one_out":
        return [(None, task_split(task, data))]
    try:
        folds = leave_one_out(
            data["labels"],
            data["groups"],
            dataset_column(task, data, task.hold_out),
            val_fraction=task.val_fraction,
            seed=task.split_seed,
        )
    except InputDataError as e:
        raise InputDataError(f"task '{task.name}': {e}") from None
    for value, split in folds:
        check_groups_disjoint(
            split, data["groups"], f"task '{task.name}' holding out {task.hold_out}={value!r}"
        )
        missing = sorted(set(range(len(data["classes"]))) - set(data["labels"][split.train]))
        if missing:
            names = [data["classes"][c] for c in missing]
            raise InputDataError(
                f"task '{task.name}': holding out {task.hold_out}={value!r} leaves no training "
                f"examples of {names}; merge values of '{task.hold_out}' or drop those classes"
            )
    return folds


def task_split(task: TaskConfig, data: dict[str, Any]) -> Split:
    """The task's one split (a ``leave_one_out`` task has several: :func:`task_folds`)."""
    if task.split == "leave_one_out":
        raise InputDataError(
            f"task '{task.name}' holds out each value of '{task.hold_out}' in turn; it has no "
            "single split to fit a final model on (use a task with a derived or given split)"
        )
    if task.split == "given" or (task.split == "auto" and data["splits"] is not None):
        if data["splits"] is None:
            raise InputDataError(
                f"task '{task.name}' asks for the given split but dataset '{task.dataset}' has no "
                "split column; add one to its CSV (split_column) or set split: derived"
            )
        split = given_split(data["splits"])
        check_groups_disjoint(split, data["groups"], f"task '{task.name}'")
    else:
        split = make_split(
            data["labels"],
            data["groups"],
            val_fraction=task.val_fraction,
            test_fraction=task.test_fraction,
            seed=task.split_seed,
        )
    _check_classes_in_parts(task, data, split)
    return split


def _check_classes_in_parts(task: TaskConfig, data: dict[str, Any], split: Split) -> None:
    """Every class needs training and test examples (and validation ones when there is a
    validation part); a class too small for that is an error, not a silently missing class."""
    labels, classes = data["labels"], data["classes"]
    parts = {"train": split.train, "test": split.test}
    if len(split.val):
        parts["val"] = split.val
    short = []
    for c, name in enumerate(classes):
        absent = [p for p, rows in parts.items() if not (labels[rows] == c).any()]
        if absent:
            short.append(f"'{name}' ({int((labels == c).sum())} images; none in {absent})")
    if short:
        raise InputDataError(
            f"task '{task.name}': class(es) {', '.join(short)} of dataset '{task.dataset}' are "
            f"too small to have examples in every part of the {split.source} split. Add images "
            "of those classes, merge or drop them (the dataset's 'query' filters CSV rows), or "
            "give a split column that places them."
        )


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


def _result_head(task, spec, protocol, data, split, pretrained_dir, g_test) -> dict[str, Any]:
    """What a result JSON says before its results: the task, backbone, split and intervals."""
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
        "exposure": exposure(_backbone_provenance(pretrained_dir), spec.kind, task.dataset),
        "interval": INTERVAL_NOTE
        + (" Test rows are resampled by group." if g_test is not None else ""),
    }


def run_evaluate(
    task: TaskConfig,
    cfg: EvalConfig,
    protocol: str,
    spec: BackboneSpec,
    dataset_store: str | Path,
    out_json: str | Path,
    *,
    out_predictions: str | Path | None = None,
    features_store: str | Path | None = None,
    pretrained_dir: str | Path | None = None,
    job: JobContext | None = None,
) -> dict[str, Any]:
    """Run ``protocol`` (see :mod:`cytofm.eval.protocols`) and write its result JSON."""
    job = job or JobContext()
    kind = _protocol(task, protocol, spec)
    data = load_task_data(task, dataset_store)
    folds = _folds(task, cfg, data)
    content = _check_content(task, spec, dataset_store, folds, pretrained_dir)
    params = {"task": task.to_dict(), "evaluate": cfg.part("patch"), "backbone": spec.to_dict()}
    with job.run(
        "evaluate", {**params, "protocol": protocol}, system_metrics=protocol == "lora"
    ) as run:
        t0 = time.perf_counter()
        feats = _features(features_store, data) if kind.needs_features else None
        run_on = functools.partial(_run_split, kind, task, cfg, spec, data, feats, pretrained_dir)
        ev = _evaluate_folds(run_on, folds, data, cfg, task)
        seconds = time.perf_counter() - t0
        result = {
            **_result_head(task, spec, protocol, data, folds[0][1], pretrained_dir, ev.groups),
            **ev.head,
            "results": ev.blocks,
            "skipped": ev.skipped,
            "seconds": seconds,
            "provenance": provenance(
                "evaluate", params, protocol=protocol, features=_features_identity(features_store)
            ),
        }
        result["exposure"].update(content or {})
        if out_predictions:
            ev.save(out_predictions, data["labels"])
        write_result(out_json, result, default=_json_default)
        for b in ev.blocks:
            tag = protocol if b["shots"] is None else f"{protocol}.{b['shots']}shot"
            run.log_metrics(
                {f"{tag}.{m}": v["mean"] for m, v in b["summary"].items() if np.isfinite(v["mean"])}
            )
        run.log_metrics({"seconds": seconds})
        run.log_artifact(out_json)
        log.info(
            "%s/%s/%s: %d result block(s), %d skipped, %.1f s",
            *(task.name, spec.name, protocol, len(ev.blocks), len(ev.skipped), seconds),
        )
    return result


def _protocol(task: TaskConfig, protocol: str, spec: BackboneSpec) -> type[Protocol]:
    """The protocol class, refused when the task does not list it or the backbone has no
    network for it to train."""
    if protocol not in task.protocols:
        raise ValueError(f"protocol {protocol!r} is not configured for task '{task.name}'")
    kind = PROTOCOLS[protocol]
    if not kind.needs_features and spec.kind in KINDS_WITHOUT_NETWORK:
        raise ConfigError(
            f"backbone '{spec.name}' ({spec.kind}) has no network for protocol '{protocol}' to "
            "train; the workflow runs only the feature protocols on it"
        )
    return kind


def _folds(task: TaskConfig, cfg: EvalConfig, data) -> list[tuple[str | None, Split]]:
    """The task's folds; a single split sets its conformal calibration rows apart."""
    folds = task_folds(task, data)
    if folds[0][0] is None:  # one split: conformal sets calibrate on rows selection never saw
        folds = [(None, _with_calibration(folds[0][1], task, cfg, data))]
    return folds


def _check_content(task, spec, dataset_store, folds, pretrained_dir) -> dict | None:
    """Refuse test rows whose pixels the backbone's pretraining read (see
    :func:`cytofm.inductive.check_test_rows`); what was checked, for ``exposure``."""
    if spec.kind != "pretrained":
        return None
    from cytofm.inductive import check_test_rows

    tested = np.unique(np.concatenate([split.test for _, split in folds]))
    inductive = (_backbone_provenance(pretrained_dir) or {}).get("inductive") or {}
    return check_test_rows(
        task.name, dataset_store, tested, pretrained_dir, bool(inductive.get("transductive"))
    )


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


def _features(features_store, data) -> np.ndarray:
    feats = np.asarray(open_store(features_store)["features"][:], dtype=np.float32)
    if len(feats) != len(data["labels"]):
        raise InputDataError(
            f"{features_store} has {len(feats)} rows but the dataset has {len(data['labels'])}; "
            "the feature store is stale, delete it and rerun embed"
        )
    return feats


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


def _backbone_provenance(pretrained_dir) -> dict | None:
    """The provenance an exported backbone carries (what its pretraining read), if any."""
    if not pretrained_dir:
        return None
    config = Path(pretrained_dir) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("provenance")


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _features_identity(features_store) -> dict | None:
    if not features_store:
        return None
    attrs = open_store(features_store).attrs.get("provenance", {})
    return {
        "store": Path(features_store).name,
        "backbone": attrs.get("backbone"),
        "source_sha256": attrs.get("source_sha256"),
    }
