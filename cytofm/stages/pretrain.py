"""Stage ``pretrain``: iBOT on patch stores -> checkpoint (for resume) + exported backbone."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cytofm.config import PretrainConfig
from cytofm.provenance import provenance
from cytofm.report.figures import plot_history
from cytofm.ssl.distributed import ERRORS_ENV, rank_failure, slurm_command, torchrun_command
from cytofm.stages.context import JobContext
from cytofm.store import open_store

__all__ = ["launch_args", "run_pretrain"]

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
    nodes: int = 1,
) -> dict:
    """Pretrain, resuming from ``out_dir/checkpoint.pt`` when present; export the teacher.

    ``held_out``: dataset store -> the evaluation tasks (TaskConfig mappings) on it; their
    test rows are never read (unless ``cfg.transductive``). With ``nproc > 1`` the same
    function runs under ``torchrun`` (DDP) in this job; with ``nodes > 1`` (a SLURM job of
    that many nodes) ``srun`` starts one ``torchrun`` of ``nproc`` workers per node.
    """
    job = job or JobContext()
    if (nproc > 1 or nodes > 1) and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(cfg, stores, out_dir, knn_store, job, nproc, held_out, nodes)
    from cytofm.ssl.train import Trainer

    out = Path(out_dir)
    stores = [Path(s) for s in stores]
    exclude, inductive = _exclusions(cfg, stores, held_out or {})
    source = _source(stores, exclude)
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
        content = _content_read(source)
        record = provenance(
            "pretrain",
            cfg,
            n_patches=len(source),
            sources=[str(s) for s in stores],
            empty_sources=[p.name for p in source.empty],
            steps=trainer.step,
            resumed_from_step=resumed_from,
            inductive={**inductive, "content_read": content["record"]},
            distributed=_distributed_record(cfg, trainer),
            step_runtime=_step_runtime(trainer),
        )
        _export(trainer, cfg, stores, out, record, content["content"])
        _log_outputs(run, trainer, out, _model_name(cfg, out))
        run.log_metrics({"final_" + k: v for k, v in last.items() if np.isfinite(v)})
    return {**last, "seconds": elapsed, "steps": trainer.step, "resumed_from_step": resumed_from}


def _source(stores: list[Path], exclude: dict):
    """The patches pretraining reads; stores without any are named in a warning."""
    from cytofm.ssl.data import PatchSource

    source = PatchSource(stores, exclude=exclude)
    if source.empty:
        names = ", ".join(p.name for p in source.empty)
        log.warning(
            f"{len(source.empty)} of {len(stores)} patch stores hold no patches (slides where "
            f"no cell was found) and add nothing: {names}"
        )
    return source


def _content_read(source) -> dict:
    """Fingerprints of the images and slide files pretraining read (its test rows left out),
    and the provenance's summary of them."""
    from cytofm.inductive import content_summary, read_content

    keep = [
        source.keep[source.offsets[i] : source.offsets[i + 1]] for i in range(len(source.paths))
    ]
    content = read_content(source.paths, keep)
    record = content_summary(content)
    if content["unchecked"]:
        log.warning(
            "%d patch store(s) carry no content fingerprint (imported by an older version; "
            "import them again to have evaluations check them): %s",
            len(content["unchecked"]), ", ".join(content["unchecked"][:5]),
        )  # fmt: skip
    return {"content": content, "record": record}


def _step_runtime(trainer) -> dict:
    """Where and how the steps ran (results do not depend on it on one device)."""
    return {
        "views": f"made in batches on {trainer.device.type}",
        "fused_attention": trainer.fused_attention,
        "compiled": trainer.compiled,
        "optimizer": trainer.optimizer_impl,
        "autocast": "bf16" if trainer.autocast_dtype is not None else "fp32",
    }


def _distributed_record(cfg: PretrainConfig, trainer) -> dict:
    """How the run was split, and whether another split would have given the same weights."""
    per_process = [
        what
        for what, on in (
            ("drop-path noise (model.drop_path > 0)", cfg.model.drop_path > 0),
            (
                "KoLeo within each process's share (loss.koleo_weight > 0)",
                cfg.loss.koleo_weight > 0,
            ),
        )
        if on
    ]
    local = int(os.environ.get("LOCAL_WORLD_SIZE", trainer.world))
    return {
        "processes": trainer.world,
        "nodes": max(trainer.world // max(local, 1), 1),
        "resumed_with_processes": trainer.resumed_world,
        # the data (batches, views, masks) never depends on the split; these parts do
        "same_weights_for_any_split": not per_process,
        "per_process_randomness": per_process,
    }


def _model_name(cfg: PretrainConfig, out: Path) -> str:
    """The name the backbone is registered under: ``pretrain.name``, or the checkpoint's own
    (``<name>_seed<N>``) for the further seeds of ``pretrain.seeds``."""
    return out.name if out.name.startswith(f"{cfg.name}_seed") else cfg.name


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


def _export(trainer, cfg: PretrainConfig, stores, out: Path, record: dict, content) -> None:
    """The teacher's ViT as a timm model folder, with the patch geometry it was trained on and
    the record of what pretraining read (:func:`cytofm.inductive.write_content`)."""
    from cytofm.inductive import write_content
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
    write_content(out / "backbone", content)
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


def launch_args(cfg, stores, out_dir, knn_store, job, held_out=None) -> dict:
    """What every torchrun worker reads (``cytofm.stages.launch``): the stage's arguments."""
    return {
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


def _launch_torchrun(cfg, stores, out_dir, knn_store, job, nproc, held_out=None, nodes=1):
    args = launch_args(cfg, stores, out_dir, knn_store, job, held_out)
    # the arguments and the workers' errors in the results folder: every node reads and writes
    # there (the shared file system a multi-node job needs)
    launch = Path(out_dir) / ".launch"
    shutil.rmtree(launch, ignore_errors=True)
    (launch / "errors").mkdir(parents=True)
    (launch / "args.json").write_text(json.dumps(args))
    if nodes > 1:
        cmd = slurm_command(nodes, nproc, launch / "args.json", cfg.rdzv_port)
    else:
        cmd = torchrun_command(launch / "args.json", nproc)
    log.info("launching %s", " ".join(cmd))

    # every worker's output (and torchrun's) goes where this job logs: its log file in a job
    try:
        sys.stderr.flush()
        sink = sys.stderr if sys.stderr.fileno() >= 0 else None
    except (AttributeError, OSError, ValueError):  # not a real file (e.g. captured in tests)
        sink = None
    env = {**os.environ, **{k: str(v) for k, v in cfg.env.items()}}  # NCCL settings and such
    proc = subprocess.run(
        cmd,
        stdout=sink,
        stderr=subprocess.STDOUT if sink is not None else None,
        env={**env, ERRORS_ENV: str(launch / "errors")},
    )
    if proc.returncode:
        failure = rank_failure(launch / "errors", nproc * nodes)
        if failure is not None:
            raise failure
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    shutil.rmtree(launch, ignore_errors=True)
    return {"nproc": nproc, "nodes": nodes}
