"""Stage ``evaluate``: one task x one backbone x one protocol -> a result JSON.

Protocols ``linear``, ``knn`` and ``fewshot`` run on the cached features; ``lora`` fine-tunes
the backbone from the task's images. All share the task's split (given by the data, or derived
once from ``split_seed``, grouped by patient/slide/batch). The JSON holds every run's metrics,
the sampled training rows and seeds, the chosen hyper-parameters and validation scores, the
mean/std over seeds with a bootstrap 95% CI, and the resolved config.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cytofm.config import EvalConfig, TaskConfig
from cytofm.errors import InputDataError
from cytofm.eval.backbones import BackboneSpec
from cytofm.eval.calibration import apply_temperature, fit_temperature
from cytofm.eval.metrics import classification_metrics, summarise
from cytofm.eval.predictions import block_key, save_predictions
from cytofm.eval.protocols import PROTOCOLS, EvalInputs, Protocol
from cytofm.eval.splits import (
    Split,
    given_split,
    has_groups,
    make_split,
    sample_fraction,
    sample_shots,
)
from cytofm.inductive import exposure
from cytofm.provenance import provenance
from cytofm.results import write_result
from cytofm.stages.context import JobContext
from cytofm.store import as_str_array, open_store

__all__ = ["load_task_data", "run_evaluate", "task_split"]

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


def task_split(task: TaskConfig, data: dict[str, Any]) -> Split:
    if task.split == "given" or (task.split == "auto" and data["splits"] is not None):
        if data["splits"] is None:
            raise InputDataError(
                f"task '{task.name}' asks for the given split but dataset '{task.dataset}' has no "
                "split column; add one to its CSV (split_column) or set split: derived"
            )
        split = given_split(data["splits"])
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
    if protocol not in task.protocols:
        raise ValueError(f"protocol {protocol!r} is not configured for task '{task.name}'")
    kind = PROTOCOLS[protocol]
    data = load_task_data(task, dataset_store)
    split = task_split(task, data)
    params = {"task": task.to_dict(), "evaluate": cfg.part("patch"), "backbone": spec.to_dict()}
    with job.run(
        "evaluate", {**params, "protocol": protocol}, system_metrics=protocol == "lora"
    ) as run:
        t0 = time.perf_counter()
        feats = _features(features_store, data) if kind.needs_features else None
        labels, classes, store = data["labels"], data["classes"], data["store"]
        inputs = EvalInputs(task, cfg, spec, labels, classes, split, store, feats, pretrained_dir)
        g_test = _groups_of(data, split.test)
        blocks, skipped, predictions = _run_protocol(kind(inputs), g_test)
        y_val = labels[split.val]
        seconds = time.perf_counter() - t0
        result = {
            **_result_head(task, spec, protocol, data, split, pretrained_dir, g_test),
            "results": blocks,
            "skipped": skipped,
            "seconds": seconds,
            "provenance": provenance(
                "evaluate", params, protocol=protocol, features=_features_identity(features_store)
            ),
        }
        if out_predictions:
            save_predictions(
                out_predictions,
                labels[split.test],
                g_test,
                predictions["test"],
                calibrated=predictions["calibrated"],
                temperatures=predictions["temperatures"],
                y_val=y_val,
                val=predictions["val"],
            )
        write_result(out_json, result, default=_json_default)
        for b in blocks:
            tag = protocol if b["shots"] is None else f"{protocol}.{b['shots']}shot"
            run.log_metrics(
                {f"{tag}.{m}": v["mean"] for m, v in b["summary"].items() if np.isfinite(v["mean"])}
            )
        run.log_metrics({"seconds": seconds})
        run.log_artifact(out_json)
        log.info(
            "%s/%s/%s: %d result block(s), %d skipped, %.1f s",
            *(task.name, spec.name, protocol, len(blocks), len(skipped), seconds),
        )
    return result


def _features(features_store, data) -> np.ndarray:
    feats = np.asarray(open_store(features_store)["features"][:], dtype=np.float32)
    if len(feats) != len(data["labels"]):
        raise InputDataError(
            f"{features_store} has {len(feats)} rows but the dataset has {len(data['labels'])}; "
            "the feature store is stale, delete it and rerun embed"
        )
    return feats


def _run_protocol(proto: Protocol, g_test):
    """The protocol's seed-independent run and its label budgets over the task's seeds, as
    result blocks (metrics with CIs), skipped budgets (a class too small) and predictions."""
    inp = proto.inputs
    y_test, classes = inp.labels[inp.split.test], inp.classes
    y_val = inp.labels[inp.split.val]
    blocks: list[dict] = []
    skipped: list[dict] = []
    # per block key: test probabilities per seed, and where the protocol gives validation
    # probabilities, those, the temperature fitted on them and the scaled test probabilities
    predictions: dict[str, dict] = {"test": {}, "calibrated": {}, "temperatures": {}, "val": {}}

    def add_block(probas, runs, **kw):
        blocks.append(_block(y_test, probas, runs, inp.cfg, groups=g_test, **kw))
        key = block_key(kw.get("shots"), kw.get("fraction"))
        predictions["test"][key] = probas
        vals = [r.pop("_val_proba", None) for r in runs]
        if all(v is not None for v in vals):
            temps = [r["temperature"] for r in runs]
            predictions["val"][key] = vals
            predictions["temperatures"][key] = temps
            predictions["calibrated"][key] = [
                apply_temperature(p, t) for p, t in zip(probas, temps, strict=True)
            ]

    def scaled(chosen: dict) -> dict:
        """The run's record: the temperature fitted on its validation probabilities (kept
        aside for the predictions file, not the JSON)."""
        val = chosen.pop("val_proba", None)
        if val is None:
            return chosen
        return {**chosen, "temperature": fit_temperature(y_val, val), "_val_proba": val}

    once = proto.once()
    if once is not None:
        p, chosen = once
        chosen = scaled(chosen)
        runs = [{"seed": None, **chosen, "test": classification_metrics(y_test, p, classes)}]
        add_block([p], runs, seed_independent=True)
    budgets = type(proto).budgets(inp.task, inp.cfg)
    if not budgets:
        return blocks, skipped, predictions
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
                rows, short = sample_shots(inp.labels, inp.split.train, amount, seed, len(classes))
            else:
                rows = sample_fraction(inp.labels, inp.split.train, amount, seed)
            bar.update(1)
            if short:
                break
            p, chosen = proto.run(rows, seed, (kind, amount))
            chosen = scaled(chosen)
            probas.append(p)
            runs.append(
                {
                    "seed": seed,
                    "train_rows": rows.tolist(),
                    **chosen,
                    "test": classification_metrics(y_test, p, classes),
                }
            )
        if short:
            skipped.append({"shots": amount, "reason": _short_reason(inp, short, amount)})
            reason = skipped[-1]["reason"]
            log.warning("task %s: %s-shot skipped: %s", inp.task.name, amount, reason)
            continue
        add_block(probas, runs, **{kind: amount})
        blocks[-1].update(proto.block_extra(runs))
    bar.close()
    return blocks, skipped, predictions


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
