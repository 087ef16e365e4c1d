"""Entry point for ``torchrun -m cytofm.stages.launch args.json`` (one process per GPU)."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path

from cytofm.config import PretrainConfig, TrackingConfig, from_mapping
from cytofm.errors import CytofmError
from cytofm.log import setup_logging
from cytofm.stages.context import JobContext

__all__ = ["RankFailed", "main", "rank_failure", "resolve_nproc"]

ERRORS_ENV = "CYTOFM_RANK_ERRORS"  # folder where a failing worker leaves its error


class RankFailed(RuntimeError):
    """A torchrun worker failed; the message is that rank's own error."""


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


def rank_failure(errors_dir: str | Path, nproc: int) -> RankFailed | None:
    """The first worker error left in ``errors_dir`` (by time), as the job's error."""
    found = sorted(Path(errors_dir).glob("rank*.txt"), key=lambda p: p.stat().st_mtime_ns)
    if not found:
        return None
    rank = found[0].stem.removeprefix("rank")
    return RankFailed(
        f"pretraining failed on rank {rank} of {nproc} (torchrun stopped the others): "
        f"{found[0].read_text().strip()}"
    )


def main(argv: list[str] | None = None) -> None:
    rank = os.environ.get("RANK", "0")
    setup_logging(tag=f"[rank {rank}]")
    try:
        _run(argv)
    except BaseException as e:
        errors = os.environ.get(ERRORS_ENV)
        if errors and not isinstance(e, KeyboardInterrupt):
            tb = "".join(traceback.format_exception(e)[-6:])
            (Path(errors) / f"rank{rank}.txt").write_text(f"{type(e).__name__}: {e}\n{tb}")
        raise


def _run(argv: list[str] | None) -> None:
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
