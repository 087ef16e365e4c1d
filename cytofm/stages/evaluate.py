"""Stage ``evaluate``: one task x one backbone x one protocol -> a result JSON.

Protocols ``linear``, ``knn`` and ``fewshot`` run on the cached features; ``lora`` fine-tunes
the backbone from the task's images. All share the task's split (given by the data, or derived
once from ``split_seed``, grouped by patient/slide/batch; see :mod:`cytofm.eval.tasks`). The
harness (:mod:`cytofm.eval.harness`) runs the protocol; this stage reads its inputs, checks
what the backbone's pretraining read, and writes the JSON: every run's metrics, the sampled
training rows and seeds, the chosen hyper-parameters and validation scores, the mean/std over
seeds with a bootstrap 95% CI, and the resolved config.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from cytofm.config import EvalConfig, TaskConfig
from cytofm.config.sections import KINDS_WITHOUT_NETWORK
from cytofm.errors import ConfigError, InputDataError
from cytofm.eval.backbones import BackboneSpec
from cytofm.eval.harness import evaluate_folds, evaluation_folds, result_head
from cytofm.eval.protocols import PROTOCOLS, DeclaredSettings, Protocol, settings_read
from cytofm.eval.tasks import load_task_data
from cytofm.inductive import check_test_rows, exposure
from cytofm.provenance import provenance
from cytofm.results import write_result
from cytofm.stages.context import JobContext
from cytofm.store import open_store

__all__ = ["run_evaluate"]

log = logging.getLogger(__name__)


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
    folds = evaluation_folds(task, cfg, data)
    content = _check_content(task, spec, dataset_store, folds, pretrained_dir)
    params = {
        "task": task.to_dict(),
        "evaluate": settings_read(protocol, cfg),  # what the rule passes
        "backbone": spec.to_dict(),
    }
    cfg = DeclaredSettings(cfg, protocol)  # type: ignore[assignment]
    with job.run(
        "evaluate", {**params, "protocol": protocol}, system_metrics=protocol == "lora"
    ) as run:
        t0 = time.perf_counter()
        feats = _features(features_store, data) if kind.needs_features else None
        ev = evaluate_folds(kind, task, cfg, spec, data, folds, feats, pretrained_dir)
        seconds = time.perf_counter() - t0
        seen = exposure(_backbone_provenance(pretrained_dir), spec.kind, task.dataset)
        result = {
            **result_head(task, spec, protocol, data, folds[0][1], ev.groups, seen),
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


def _check_content(task, spec, dataset_store, folds, pretrained_dir) -> dict | None:
    """Refuse test rows whose pixels the backbone's pretraining read (see
    :func:`cytofm.inductive.check_test_rows`); what was checked, for ``exposure``."""
    if spec.kind != "pretrained":
        return None
    tested = np.unique(np.concatenate([split.test for _, split in folds]))
    inductive = (_backbone_provenance(pretrained_dir) or {}).get("inductive") or {}
    return check_test_rows(
        task.name, dataset_store, tested, pretrained_dir, bool(inductive.get("transductive"))
    )


def _features(features_store, data) -> np.ndarray:
    feats = np.asarray(open_store(features_store)["features"][:], dtype=np.float32)
    if len(feats) != len(data["labels"]):
        raise InputDataError(
            f"{features_store} has {len(feats)} rows but the dataset has {len(data['labels'])}; "
            "the feature store is stale, delete it and rerun embed"
        )
    return feats


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
