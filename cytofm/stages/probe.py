"""Stage ``pretrain_probe``: does the pretrained backbone beat random weights?"""

from __future__ import annotations

import json
from pathlib import Path

from cytofm.stages.context import JobContext
from cytofm.store import open_store

__all__ = ["run_probe"]


def run_probe(
    backbone_dir: str | Path,
    dataset_store: str | Path,
    out_json: str | Path,
    job: JobContext | None = None,
) -> dict:
    from cytofm.ssl.probe import ssl_vs_random

    job = job or JobContext()
    ds = open_store(dataset_store)
    with job.run(
        "pretrain_probe", {"backbone": str(backbone_dir), "dataset": str(dataset_store)}
    ) as run:
        result = ssl_vs_random(backbone_dir, ds["images"][:], ds["labels"][:], ds["groups"][:])
        result["dataset"] = ds.attrs.get("name")
        result["classes"] = list(ds.attrs.get("classes", []))
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2))
        run.log_metrics({k: result[k] for k in ("ssl_mean", "random_mean", "margin")})
        run.log_artifact(out_json)
    return result
