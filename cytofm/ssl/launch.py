"""Entry point for ``torchrun -m cytofm.ssl.launch args.json`` (one process per GPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cytofm.config import PretrainConfig, TrackingConfig, from_mapping
from cytofm.log import setup_logging
from cytofm.stages.context import JobContext


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
    )
    run_pretrain(
        from_mapping(PretrainConfig, args["cfg"], "pretrain"),
        args["stores"],
        args["out_dir"],
        args["knn_store"],
        job,
    )


if __name__ == "__main__":
    main()
