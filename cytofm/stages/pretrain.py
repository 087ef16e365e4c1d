"""Stage ``pretrain``: iBOT on patch stores -> checkpoint (for resume) + exported backbone."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cytofm.config import PretrainConfig
from cytofm.provenance import provenance
from cytofm.report.figures import plot_history
from cytofm.stages.context import JobContext
from cytofm.store import open_store

__all__ = ["run_pretrain"]

log = logging.getLogger(__name__)


def _patch_geometry(stores: list[Path]) -> tuple[float | None, float | None]:
    attrs = open_store(stores[0]).attrs
    return attrs.get("mpp"), attrs.get("patch_um")


def run_pretrain(
    cfg: PretrainConfig,
    stores: list[str | Path],
    out_dir: str | Path,
    knn_store: str | Path | None = None,
    job: JobContext | None = None,
    nproc: int = 1,
    held_out: dict[str, list[dict]] | None = None,
) -> dict:
    """Pretrain, resuming from ``out_dir/checkpoint.pt`` when present; export the teacher.

    ``held_out``: dataset store -> the evaluation tasks (TaskConfig mappings) on it; their
    test rows are never read (unless ``cfg.transductive``). With ``nproc > 1`` the same
    function runs under ``torchrun`` (DDP) in this job.
    """
    job = job or JobContext()
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(cfg, stores, out_dir, knn_store, job, nproc, held_out)
    from cytofm.ssl.data import PatchSource
    from cytofm.ssl.train import Trainer

    out = Path(out_dir)
    stores = [Path(s) for s in stores]
    exclude, inductive = _exclusions(cfg, stores, held_out or {})
    source = PatchSource(stores, exclude=exclude)
    if source.empty:
        names = ", ".join(p.name for p in source.empty)
        log.warning(
            f"{len(source.empty)} of {len(stores)} patch stores hold no patches (slides where "
            f"no cell was found) and add nothing: {names}"
        )
    trainer = Trainer(cfg, source, out)
    resumed_from = trainer.step if trainer.load_checkpoint() else 0
    knn = _knn_set(knn_store, cfg.seed) if knn_store else None
    if trainer.rank != 0:
        trainer.fit(knn=None)
        return {}
    params = {"pretrain": cfg.to_dict(), "n_patches": len(source), "n_stores": len(stores)}
    params.update(n_empty_stores=len(source.empty), world_size=trainer.world)
    params["device"] = str(trainer.device)
    # live: loss curves visible while it trains
    with job.run("pretrain", params, live=True, system_metrics=True) as run:
        run.set_tags({"pretrain.resumed_from_step": resumed_from})
        t0 = time.perf_counter()
        last = trainer.fit(logger=run, knn=knn)
        elapsed = time.perf_counter() - t0
        record = provenance(
            "pretrain",
            cfg,
            n_patches=len(source),
            sources=[str(s) for s in stores],
            empty_sources=[p.name for p in source.empty],
            steps=trainer.step,
            resumed_from_step=resumed_from,
            inductive=inductive,
        )
        _export(trainer, cfg, stores, out, record)
        _log_outputs(run, trainer, out, cfg.name)
        run.log_metrics({"final_" + k: v for k, v in last.items() if np.isfinite(v)})
    return {**last, "seconds": elapsed, "steps": trainer.step, "resumed_from_step": resumed_from}


def _log_outputs(run, trainer, out: Path, name: str) -> None:
    """The training curves (drawn here), the resolved config, the backbone's config and the
    backbone as an MLflow model."""
    if trainer.history:
        plot_history(trainer.history, out / "training.png", name)
        run.log_artifact(out / "training.png")
    run.log_artifact(out / "resolved_config.json")
    run.log_artifact(out / "backbone" / "config.json", "backbone")
    run.log_model("backbone", out / "backbone", name, "mlflow_model")  # also registered


def _knn_set(knn_store, seed: int):
    """The labelled store the periodic kNN probe of pretraining reads."""
    from cytofm.ssl.monitor import KnnSet

    ks = open_store(knn_store)
    return KnnSet.from_arrays(ks["images"][:], ks["labels"][:], ks["groups"][:], seed)


def _export(trainer, cfg: PretrainConfig, stores: list[Path], out: Path, record: dict) -> None:
    """The teacher's ViT as a timm model folder, with the patch geometry it was trained on."""
    from cytofm.ssl.export import export_backbone

    patch_mpp, patch_um = _patch_geometry(stores)
    export_backbone(
        trainer.teacher.backbone.vit,
        out / "backbone",
        arch=cfg.model.arch,
        model_args=dict(cfg.model.model_args),
        img_size=cfg.crops.global_size,
        patch_size=cfg.model.patch_size,
        mean=trainer.mean,
        std=trainer.std,
        patch_mpp=patch_mpp,
        patch_um=patch_um,
        provenance=record,
    )
    (out / "resolved_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))


def _exclusions(cfg: PretrainConfig, stores: list[Path], held_out: dict) -> tuple[dict, dict]:
    """Rows to leave out per store index, and the record of it for provenance."""
    from cytofm.config import TaskConfig, from_mapping
    from cytofm.inductive import held_out_rows

    record = {
        "transductive": bool(cfg.transductive),
        "datasets": [p.stem for p in stores if p.parent.name == "datasets"],
        "excluded_rows": {},
    }
    exclude = {}
    if cfg.transductive:
        return exclude, record
    by_path = {Path(k).resolve(): v for k, v in held_out.items()}
    for i, path in enumerate(stores):
        tasks = by_path.get(path.resolve())
        if not tasks:
            continue
        typed = [from_mapping(TaskConfig, t, f"evaluate.tasks.{t['name']}") for t in tasks]
        rows, per_task = held_out_rows(path, typed)
        exclude[i] = rows
        record["excluded_rows"][path.stem] = {"rows": len(rows), "tasks": per_task}
        log.info("pretraining leaves out %d test rows of %s (tasks %s)", len(rows), path, per_task)
    return exclude, record


def _launch_torchrun(cfg, stores, out_dir, knn_store, job, nproc, held_out=None) -> dict:
    args = {
        "held_out": held_out or {},
        "cfg": cfg.to_dict(),
        "stores": [str(s) for s in stores],
        "out_dir": str(out_dir),
        "knn_store": str(knn_store) if knn_store else None,
        "job": {
            "results_dir": str(job.results_dir),
            "tracking": job.tracking.to_dict(),
            "rule": job.rule,
            "wildcards": dict(job.wildcards),
            "seed": job.seed,
            "inputs": dict(job.inputs),
        },
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(args, fh)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "cytofm.stages.launch",
        fh.name,
    ]
    log.info("launching %s", " ".join(cmd))
    from cytofm.stages.launch import ERRORS_ENV, rank_failure

    # every worker's output (and torchrun's) goes where this job logs: its log file in a job
    try:
        sys.stderr.flush()
        sink = sys.stderr if sys.stderr.fileno() >= 0 else None
    except (AttributeError, OSError, ValueError):  # not a real file (e.g. captured in tests)
        sink = None
    with tempfile.TemporaryDirectory(prefix="cytofm-ranks-") as errors:
        proc = subprocess.run(
            cmd,
            stdout=sink,
            stderr=subprocess.STDOUT if sink is not None else None,
            env={**os.environ, ERRORS_ENV: errors},
        )
        if proc.returncode:
            failure = rank_failure(errors, nproc)
            if failure is not None:
                raise failure
            raise subprocess.CalledProcessError(proc.returncode, cmd)
    Path(fh.name).unlink(missing_ok=True)
    return {"nproc": nproc}
