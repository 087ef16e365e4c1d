"""Provenance: what produced an artifact (code version, commit, config, input checksums)."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cytofm import __version__

__all__ = [
    "INVOCATION_ENV",
    "bind_job",
    "canonical",
    "config_hash",
    "file_sha256",
    "git_commit",
    "invocation_id",
    "library_versions",
    "new_invocation_id",
    "provenance",
    "tree_sha256",
]

_PKG_DIR = Path(__file__).resolve().parent

# One id per `snakemake` invocation, set by the main process (workflow/rules/common.smk) and
# inherited by every job it starts, locally or through sbatch.
INVOCATION_ENV = "CYTOFM_INVOCATION_ID"

# The running job's id, MLflow run id and input lineage, so records written inside it carry them.
_JOB: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "cytofm_job", default=None
)


def new_invocation_id() -> str:
    """UTC start time plus a random suffix: sortable and unique across users."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


def invocation_id() -> str | None:
    """The pipeline invocation this process belongs to (None outside a workflow run)."""
    return os.environ.get(INVOCATION_ENV) or None


@contextlib.contextmanager
def bind_job(
    job_id: str | None, mlflow_run_id: str | None, inputs: Mapping[str, Any] | None
) -> Iterator[None]:
    """Within this block, :func:`provenance` records the job's id (its MLflow run carries it as
    the tag ``cytofm.job_id``), its MLflow run id when already known, and its input lineage."""
    token = _JOB.set(
        {"job_id": job_id, "mlflow_run_id": mlflow_run_id, "inputs": dict(inputs or {})}
    )
    try:
        yield
    finally:
        _JOB.reset(token)


def git_commit(path: str | Path = _PKG_DIR) -> str:
    """Commit of the git checkout holding ``path`` ('unknown' outside a checkout).

    A '-dirty' suffix marks uncommitted changes to tracked files, so results from edited
    code are never mistaken for results of the commit.
    """
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=path,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


# the libraries whose versions change what a stage computes
_LIBRARIES = (
    "numpy",
    "scipy",
    "scikit-learn",
    "opencv-python",
    "openslide-python",
    "openslide-bin",
    "tifffile",
    "imagecodecs",
    "zarr",
    "torch",
    "timm",
    "peft",
    "safetensors",
)


@functools.lru_cache(maxsize=1)
def _installed() -> dict[str, str]:
    """Name -> version of the installed ``_LIBRARIES``: from the names of the ``.dist-info``
    folders on ``sys.path`` (one directory listing each; ``importlib.metadata.version``
    parses every package's METADATA, 25 ms a job), the first on the path winning as for an
    import; ``importlib.metadata`` for any not found that way."""
    wanted = {_normalise(name): name for name in _LIBRARIES}
    found: dict[str, str] = {}
    for entry in sys.path:
        with contextlib.suppress(OSError):
            for folder in os.listdir(entry or "."):
                stem = folder.removesuffix(".dist-info")
                if stem != folder and stem.count("-") == 1:
                    dist, version = stem.split("-")
                    name = wanted.get(_normalise(dist))
                    if name is not None:
                        found.setdefault(name, version)
    for name in _LIBRARIES:
        if name not in found:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                found[name] = importlib.metadata.version(name)
    return {name: found[name] for name in _LIBRARIES if name in found}


def _normalise(name: str) -> str:
    """A distribution name as packaging compares them (PEP 503)."""
    return name.lower().replace("_", "-").replace(".", "-")


def library_versions() -> dict[str, Any]:
    """Versions of the libraries that shape the numbers, read from the installed packages (no
    import), and, where this process uses torch, its CUDA and cuDNN builds and the GPU it ran
    on (None on CPU)."""
    out: dict[str, Any] = dict(_installed())
    torch = sys.modules.get("torch")  # only where the stage imported it: no start-up cost
    if torch is not None:
        out["cuda"] = torch.version.cuda
        out["cudnn"] = None
        out["gpu"] = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["cudnn"] = torch.backends.cudnn.version()
            out["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
    return out


def canonical(obj: Any) -> Any:
    """Plain, order-independent form: mappings with sorted string keys, tuples as lists, paths
    as strings, numpy scalars as Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj


def config_hash(config: Mapping[str, Any] | Any) -> str:
    """Short stable hash of a (nested) config mapping; key order does not matter."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    blob = json.dumps(canonical(config), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in 4 MiB chunks so memory does not grow with file size."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(path: str | Path) -> str:
    """SHA-256 over the relative names and contents of every file below a folder."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def provenance(stage: str, config: Mapping[str, Any] | Any, **extra: Any) -> dict[str, Any]:
    """The provenance record written into every artifact's attributes."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    record = {
        "stage": stage,
        "cytofm_version": __version__,
        "git_commit": git_commit(),
        "config": canonical(config),
        "config_hash": config_hash(config),
        "python": platform.python_version(),
        "versions": library_versions(),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "invocation_id": invocation_id(),
    }
    job = _JOB.get()
    if job is not None:
        record["job_id"] = job["job_id"]
        if job["mlflow_run_id"]:
            record["mlflow_run_id"] = job["mlflow_run_id"]
        record["inputs"] = canonical(job["inputs"])
    record.update(canonical(extra))
    return record
