"""Starting pretraining's worker processes: how many per node, the ``torchrun`` command of one
node and the ``srun`` command of a multi-node SLURM job, and the error a failing worker
(rank) leaves for the job to report.

Every worker runs ``python -m cytofm.stages.launch args.json``; the pretraining stage builds
the command here and waits for it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from cytofm.errors import CytofmError

__all__ = [
    "ERRORS_ENV",
    "RankFailed",
    "rank_failure",
    "resolve_nproc",
    "slurm_command",
    "torchrun_command",
    "worker_tag",
]

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


def torchrun_command(
    args_file: str | Path,
    nproc: int,
    *,
    nnodes: int = 1,
    endpoint: str | None = None,
    rdzv_id: str = "cytofm",
) -> list[str]:
    """The ``torchrun`` of one node: ``nproc`` workers; with ``nnodes`` > 1 they meet the other
    nodes' at the c10d rendezvous on ``endpoint`` (host:port of the first node)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [
            f"--nnodes={nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={rdzv_id}",
        ]
    return [*cmd, "-m", "cytofm.stages.launch", str(args_file)]


def slurm_command(nnodes: int, nproc: int, args_file: str | Path, port: int) -> list[str]:
    """Inside a SLURM job of ``nnodes`` nodes: ``srun`` starts one ``torchrun`` per node, whose
    rendezvous is on the job's first node. Refuses to run outside such an allocation."""
    granted = int(os.environ.get("SLURM_JOB_NUM_NODES", "0") or 0)
    if granted != nnodes:
        where = f"a SLURM job of {granted} node(s)" if granted else "no SLURM job"
        raise CytofmError(
            f"pretraining asks for {nnodes} nodes (resources.pretrain.nodes) but runs in "
            f"{where}. Submit it with `snakemake --profile profiles/slurm ...` (the plugin asks "
            "SLURM for the nodes), or set resources.pretrain.nodes: 1 to train on this machine."
        )
    import subprocess

    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    endpoint = f"{hosts[0]}:{port}"
    job_id = os.environ.get("SLURM_JOB_ID", "cytofm")
    inner = torchrun_command(args_file, nproc, nnodes=nnodes, endpoint=endpoint, rdzv_id=job_id)
    return [
        "srun",
        f"--nodes={nnodes}",
        f"--ntasks={nnodes}",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        *inner,
    ]


def worker_tag() -> str:
    """How a worker's log records start: its rank, and its node when the job spans several."""
    rank = os.environ.get("RANK", "0")
    if int(os.environ.get("WORLD_SIZE", "1")) > int(os.environ.get("LOCAL_WORLD_SIZE", "1")):
        import socket

        return f"[node {socket.gethostname().split('.')[0]} rank {rank}]"
    return f"[rank {rank}]"
