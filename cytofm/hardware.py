"""What the machine offers, found without importing torch (the Snakefile asks on every start)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = [
    "gpu_request",
    "limit_malloc_arenas",
    "loader_workers",
    "opencv_threads",
    "threaded_cpu_stage",
    "visible_gpus",
]


def visible_gpus(environ: Mapping[str, str] | None = None, dev: str | Path = "/dev") -> int:
    """NVIDIA GPUs a process started here could use: the ``/dev/nvidia<N>`` device nodes,
    narrowed by ``CUDA_VISIBLE_DEVICES`` when it is set (an empty value hides them all)."""
    environ = os.environ if environ is None else environ
    try:
        nodes = [p.name for p in Path(dev).iterdir() if re.fullmatch(r"nvidia\d+", p.name)]
    except OSError:
        return 0
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return len(nodes)
    wanted = [v for v in visible.split(",") if v.strip() not in ("", "-1")]
    return min(len(wanted), len(nodes)) if nodes else 0


def gpu_request(setting: bool | str, *, local: bool, gpus_here: int | None = None) -> int:
    """GPUs a GPU rule's job asks for (0 or 1) under ``resources.gpu``.

    ``true``/``false`` are taken as given. ``auto`` asks for a GPU when jobs go to a cluster
    (its nodes have the GPUs, the submitting host need not; ``local`` is false when Snakemake
    runs with ``--jobs``, as profiles/slurm does) or when this machine has one; on a CPU-only
    machine running jobs locally (``--cores``) it asks for none, so those jobs are not queued
    one at a time behind a GPU that does not exist.
    """
    if setting is True or setting is False:
        return int(setting)
    if setting != "auto":
        raise ValueError(f"resources.gpu: {setting!r} is not one of auto, true, false")
    if not local:
        return 1
    return int((visible_gpus() if gpus_here is None else gpus_here) > 0)


def loader_workers(setting: int | str, device, nproc: int = 1, most: int | None = None) -> int:
    """DataLoader worker processes of one process feeding a device (training, embedding).
    ``auto``: on a GPU, the cores this process may use (its share when several share the
    machine) less one for the main loop, at most ``most``; on the CPU none, since workers
    would take cores from the model itself."""
    if setting != "auto":
        return int(setting)
    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = max(1, (cores or 2) // max(nproc, 1) - 1)
    return min(n, most) if most else n


_M_ARENA_MAX = -8  # mallopt parameter of glibc's malloc.h


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas before a stage starts threads that allocate large numpy
    arrays: each thread otherwise gets its own arena, which keeps freed blocks, and a job's
    peak memory then grows with the slide (measured: 299 MB against 217 MB on a 25k px
    slide with two threads, at the same speed). No-op (False) where the C library is not
    glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not hasattr(os, "confstr"):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        return bool(ctypes.CDLL(name).mallopt(_M_ARENA_MAX, int(arenas)))
    except (OSError, AttributeError, ValueError):
        return False


@contextlib.contextmanager
def opencv_threads(n: int = 1) -> Iterator[None]:
    """OpenCV's own worker threads limited to ``n`` while a stage runs: a stage that runs
    its work on the job's ``threads`` calls OpenCV from each, and OpenCV spreading every call
    over all cores too would take more cores than the job was given."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(int(n))
    try:
        yield
    finally:
        cv2.setNumThreads(before)


@contextlib.contextmanager
def threaded_cpu_stage() -> Iterator[None]:
    """A CPU stage running its work on the rule's threads: malloc arenas capped (peak memory
    stays flat in slide size) and OpenCV kept to one thread per worker (the job uses the
    cores its rule asks for)."""
    limit_malloc_arenas()
    with opencv_threads(1):
        yield
