"""Entry point for ``torchrun -m cytofm.ssl.launch args.json`` (one process per GPU)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from cytofm.config import PretrainConfig, TrackingConfig, from_mapping
from cytofm.errors import CytofmError
from cytofm.log import setup_logging
from cytofm.stages.context import JobContext

__all__ = ["main", "resolve_nproc"]

log = logging.getLogger(__name__)


def resolve_nproc(setting: int | str, job_gpus: int, visible_gpus: int | None = None) -> int:
    """Processes for the pretraining job: one per GPU the job was given, or 1 on the CPU.

    ``setting`` is ``pretrain.nproc``: an integer is taken as is (``2`` on a CPU runs two gloo
    processes, useful to test DDP); ``"auto"`` means the job's ``gpu`` resource (what Snakemake
    granted it locally, what SLURM allocated on a cluster), limited to the GPUs this process
    can see. ``visible_gpus`` defaults to ``torch.cuda.device_count()``.
    """
    if isinstance(setting, int) and not isinstance(setting, bool):
        if setting < 1:
            raise CytofmError(f"pretrain.nproc must be >= 1 or 'auto', got {setting}")
        return setting
    if setting != "auto":
        raise CytofmError(f"pretrain.nproc must be an integer >= 1 or 'auto', got {setting!r}")
    if visible_gpus is None:
        import torch

        visible_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    job_gpus = int(job_gpus or 0)
    if job_gpus <= 0 or visible_gpus == 0:
        return 1
    if visible_gpus < job_gpus:
        log.warning(
            "the job asked for %d GPUs but %d are visible; starting %d processes",
            job_gpus,
            visible_gpus,
            visible_gpus,
        )
    return min(job_gpus, visible_gpus)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    from cytofm.stages.pretrain import run_pretrain

    j = args["job"]
    job = JobContext(
        results_dir=Path(j["results_dir"]),
        tracking=from_mapping(TrackingConfig, j["tracking"], "mlflow"),
        rule=j["rule"],
        wildcards=j["wildcards"],
        seed=j["seed"],
        inputs=j.get("inputs", {}),
    )
    run_pretrain(
        from_mapping(PretrainConfig, args["cfg"], "pretrain"),
        args["stores"],
        args["out_dir"],
        args["knn_store"],
        job,
        held_out=args.get("held_out") or {},
    )


if __name__ == "__main__":
    main()
