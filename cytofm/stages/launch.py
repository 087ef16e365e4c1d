"""Entry point for ``torchrun -m cytofm.stages.launch args.json`` (one process per GPU): each
worker runs the pretraining stage with the arguments the launching job wrote, and a failing
worker leaves its error where that job reads it (the commands and the error file are
:mod:`cytofm.ssl.distributed`'s)."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from cytofm.config import PretrainConfig, TrackingConfig, from_mapping
from cytofm.log import setup_logging
from cytofm.ssl.distributed import ERRORS_ENV, resolve_nproc, worker_tag
from cytofm.stages.context import JobContext

__all__ = ["main", "resolve_nproc"]  # resolve_nproc: read here by the workflow's pretrain script


def main(argv: list[str] | None = None) -> None:
    rank = os.environ.get("RANK", "0")
    setup_logging(tag=worker_tag())
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
