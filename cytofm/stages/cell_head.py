"""Stage ``cell_head``: a cell task's final linear head, for labelling the cells of new slides."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cytofm.config import EvalConfig, TaskConfig
from cytofm.eval.cell_head import fit_cell_head, save_cell_head
from cytofm.eval.mil_model import feature_signature
from cytofm.eval.tasks import load_task_data, task_split
from cytofm.provenance import provenance
from cytofm.stages.context import JobContext
from cytofm.store import open_store

__all__ = ["run_cell_head"]

log = logging.getLogger(__name__)


def run_cell_head(
    task: TaskConfig,
    cfg: EvalConfig,
    backbone: str,
    dataset_store: str | Path,
    features_store: str | Path,
    out_dir: str | Path,
    job: JobContext | None = None,
) -> dict:
    """Fit and save the head (see :mod:`cytofm.eval.cell_head`) of ``task`` on ``backbone``'s
    features; it is logged and registered with the job's MLflow run."""
    job = job or JobContext()
    data = load_task_data(task, dataset_store)
    split = task_split(task, data)
    params = {"task": task.to_dict(), "linear": cfg.linear.to_dict(), "backbone": backbone}
    with job.run("cell_head", params) as run:
        feats = np.asarray(open_store(features_store)["features"][:], np.float32)
        head, C, scores, test, rows = fit_cell_head(
            feats, data["labels"], split, data["classes"], cfg.linear, cfg.select_metric
        )
        counts = np.bincount(data["labels"][rows], minlength=len(data["classes"]))
        card = {
            "task": task.name,
            "classes": data["classes"],
            "protocol": "linear",
            "backbone": backbone,
            "features": feature_signature(features_store, dataset_store),
            "C": C,
            "validation": {
                "metric": cfg.select_metric,
                "scores": {str(k): v for k, v in scores.items()},
            },
            "training": {
                "rows": "training + validation rows of the task's split (test rows left out)",
                "n_rows": len(rows),
                "class_counts": dict(zip(data["classes"], counts.tolist(), strict=True)),
            },
            "test_of_evaluated_model": test,
            "provenance": provenance("cell_head", params),
        }
        save_cell_head(out_dir, head, card)
        run.log_metrics({"C": C, **{f"test.{k}": v for k, v in test.items() if np.isscalar(v)}})
        run.log_artifacts(out_dir, "head")
        run.log_model("linear", out_dir, f"{task.name}.{backbone}.linear", "mlflow_model")
        log.info("%s/%s: linear head, C=%g, %d rows", task.name, backbone, C, len(rows))
    return card
