"""Stage ``robustness``: a task's batch-leak probe and robustness index on one backbone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from cytofm.config import EvalConfig, TaskConfig
from cytofm.eval.robustness import batch_probe, robustness_index
from cytofm.eval.tasks import dataset_column, load_task_data, task_split
from cytofm.provenance import provenance
from cytofm.stages.context import JobContext
from cytofm.store import atomic_json, open_store

__all__ = ["run_robustness"]

log = logging.getLogger(__name__)


def run_robustness(
    task: TaskConfig,
    cfg: EvalConfig,
    backbone: str,
    dataset_store: str | Path,
    features_store: str | Path,
    out_json: str | Path,
    job: JobContext | None = None,
) -> dict:
    """How well ``backbone``'s features predict the task's ``batch`` column next to its class,
    and their robustness index (see :mod:`cytofm.eval.robustness`), into ``out_json``."""
    job = job or JobContext()
    data = load_task_data(task, dataset_store)
    split, labels = task_split(task, data), data["labels"]
    batch_names, batch = np.unique(dataset_column(task, data, task.batch), return_inverse=True)
    groups = data["groups"] if data["groups"] is not None and len(set(data["groups"])) > 1 else None
    params = {"task": task.to_dict(), "evaluate": cfg.part("robustness"), "backbone": backbone}
    with job.run("robustness", params) as run:
        feats = np.asarray(open_store(features_store)["features"][:], np.float32)
        probe = {"Cs": cfg.linear.Cs, "max_iter": cfg.linear.max_iter, "n_boot": cfg.bootstrap}
        g_test = groups[split.test] if groups is not None else None
        result = {
            "task": task.name,
            "backbone": backbone,
            "batch_column": task.batch,
            "batch_values": batch_names.tolist(),
            "class_probe": batch_probe(
                feats, labels, split, g_test, names=data["classes"], **probe
            ),
            "batch_probe": batch_probe(
                feats, batch.astype(np.int64), split, g_test, names=batch_names.tolist(), **probe
            ),
            "robustness": robustness_index(
                feats, labels, batch, groups, k=cfg.knn.k, n_boot=cfg.bootstrap
            ),
            "provenance": provenance("robustness", params),
        }
        atomic_json(out_json, result)
        scalars = {
            "class_balanced_accuracy": result["class_probe"]["balanced_accuracy"],
            "batch_balanced_accuracy": result["batch_probe"]["balanced_accuracy"],
            "batch_chance": result["batch_probe"]["chance"],
            "robustness_index": result["robustness"]["robustness_index"],
        }
        run.log_metrics(scalars)
        run.log_artifact(out_json)
        log.info("%s/%s robustness: %s", task.name, backbone, json.dumps(scalars))
    return result
