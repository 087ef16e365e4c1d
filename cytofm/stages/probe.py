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

__all__ = ["inductive_margin", "run_probe"]


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
    from cytofm.eval.probe import ssl_vs_random

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


def inductive_margin(cfg, dataset_store, task, out_dir, *, random_seeds=(0, 1), job=None) -> dict:
    """Pretrain with ``cfg`` on a labelled dataset store with ``task``'s test rows left out
    (as the workflow's inductive pretraining leaves them out), then probe the exported
    backbone against random initialisations on that task's split: the rows scored were never
    read by pretraining. ``task``: a :class:`cytofm.config.TaskConfig` on the store."""
    from cytofm.eval.probe import ssl_vs_random
    from cytofm.ssl.export import read_backbone_config
    from cytofm.stages.pretrain import run_pretrain
    from cytofm.store import open_store

    data = load_task_data(task, dataset_store)
    split = task_split(task, data)
    run_pretrain(cfg, [dataset_store], out_dir, held_out={str(dataset_store): [task.to_dict()]},
                 job=job)  # fmt: skip
    ds = open_store(dataset_store)
    res = ssl_vs_random(
        Path(out_dir) / "backbone",
        ds["images"][:],
        data["labels"],
        split=split,
        classes=data["classes"],
        seeds=random_seeds,
    )
    prov = read_backbone_config(Path(out_dir) / "backbone")["provenance"]
    res["test_rows_left_out_of_pretraining"] = prov["inductive"]["excluded_rows"]
    res["pretrain_seed"] = int(cfg.seed)
    return res
