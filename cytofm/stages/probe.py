"""Stage ``pretrain_probe``: does the pretrained backbone beat random weights?

The probe is the evaluation's linear protocol on the split of the task that evaluates the probe
dataset (so its test rows are those pretraining leaves out), not a second probe of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

from cytofm.config import EvalConfig, TaskConfig
from cytofm.eval.tasks import load_task_data, task_split
from cytofm.stages.context import JobContext

__all__ = ["run_probe"]


def run_probe(
    backbone_dir: str | Path,
    dataset_store: str | Path,
    out_json: str | Path,
    task: TaskConfig | None = None,
    evaluate: EvalConfig | None = None,
    job: JobContext | None = None,
) -> dict:
    """``task``: the evaluation task on this dataset whose split the probe uses (default: a
    task with the default split settings); ``evaluate``: its linear-probe settings."""
    from cytofm.ssl.probe import ssl_vs_random

    job = job or JobContext()
    task = task or TaskConfig(name="probe", dataset=Path(dataset_store).stem)
    evaluate = evaluate or EvalConfig()
    data = load_task_data(task, dataset_store)
    split = task_split(task, data)
    params = {"backbone": str(backbone_dir), "dataset": str(dataset_store), "task": task.name}
    with job.run("pretrain_probe", params) as run:
        result = ssl_vs_random(
            backbone_dir,
            data["store"]["images"][:],
            data["labels"],
            split=split,
            classes=data["classes"],
            linear=evaluate.linear,
            metric=evaluate.select_metric,
        )
        result["dataset"] = data["store"].attrs.get("name")
        result["classes"] = data["classes"]
        result["task"] = task.name
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2))
        run.log_metrics({k: result[k] for k in ("ssl_mean", "random_mean", "margin")})
        run.log_artifact(out_json)
    return result
