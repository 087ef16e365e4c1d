"""MLflow tracking: the only part of cytofm that imports mlflow (this package: runs and the
spool here; the parent run of an invocation in ``invocation``, system metrics in ``system``,
models in ``models``, the SQLite lock in ``store``).

Every Snakemake job opens exactly one run through :func:`job_run`. The default store is a SQLite
file under the results folder; ``MLFLOW_TRACKING_URI`` (or ``mlflow.tracking_uri`` in config)
points elsewhere, and the URI ``none`` switches tracking off.

Importing mlflow and opening its store costs a job 2-3 s, far more than tiling a microscope
field takes. So inside a workflow (which sets ``CYTOFM_MLFLOW_SPOOL``, see
workflow/rules/common.smk) a job writes its run to a spool folder instead: a ``run.json``
(tags, params, status, times), a ``metrics.jsonl`` and an ``artifacts/`` folder, with no mlflow
import. :func:`flush_spool` sends the finished runs to MLflow in one process when the workflow
ends (and picks up what an interrupted workflow left); ``python -m cytofm.tracking flush
<results>`` does it by hand. Long jobs (pretraining) log live, so their curves can be watched.

Every job has a ``job_id`` (uuid) that its outputs' provenance records and its MLflow run carries
as the tag ``cytofm.job_id``; lineage follows these ids. Every job's run is nested under one
parent run of its workflow invocation, which :func:`end_invocation` closes when the workflow
ends. Writes to a SQLite store are serialised with a file lock because parallel jobs share one
database file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cytofm.config import TrackingConfig
from cytofm.lineage import compact, input_lineage, lineage_tags
from cytofm.provenance import bind_job, config_hash, git_commit, invocation_id
from cytofm.tracking.invocation import (
    PARENTS_ENV,
    close_invocations,
    parent_run,
    record_parent,
    source_tags,
)
from cytofm.tracking.store import file_lock as _file_lock
from cytofm.tracking.store import store_of as _store_of
from cytofm.tracking.system import SystemSampler

__all__ = [
    "PARENTS_DIR",
    "PARENTS_ENV",
    "SPOOL_ENV",
    "RunLogger",
    "end_invocation",
    "flatten",
    "flush_spool",
    "job_run",
    "resolve_tracking_uri",
]

# the spool folder of the running workflow; jobs started without it log to MLflow directly
SPOOL_ENV = "CYTOFM_MLFLOW_SPOOL"
# in the spool folder: markers of the parent runs in use (cytofm/tracking/invocation.py)
PARENTS_DIR = ".parents"

log = logging.getLogger(__name__)


def resolve_tracking_uri(config: TrackingConfig, results_dir: str | Path) -> str:
    """Environment variable, then config, then ``sqlite:///<results>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    if config.tracking_uri:
        return config.tracking_uri
    db = Path(results_dir).resolve() / "mlflow.db"
    return f"sqlite:///{db}"


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat ``{"a.b": value}`` for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


class RunLogger:
    """Handle on one job's run. This base class is tracking switched off: every call is a no-op.
    ``job_id`` names the job in provenance and lineage; ``run_id`` is its MLflow run id when
    already known (live runs; a spooled run gets one when it is sent)."""

    def __init__(self, job_id: str | None = None):
        self.job_id = job_id
        self.run_id: str | None = None

    @property
    def active(self) -> bool:
        return False

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The stage's config, flattened to ``a.b`` keys."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Numbers, optionally at a step."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """String tags."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """One file, under ``artifact_path`` in the run's artifacts."""

    def log_dict(self, obj: Mapping[str, Any], name: str) -> None:
        """A JSON artifact ``name`` holding ``obj``."""

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Every file under ``folder`` (PNG sets such as heatmaps), keeping the layout."""

    # set from ``mlflow.register_models`` by :func:`job_run`
    register_models: bool = False

    def log_model(self, kind: str, folder: str | Path, name: str, artifact_path: str) -> None:
        """A cytofm model folder of ``kind`` (cytofm/tracking/models.py) as an MLflow model
        under ``artifact_path``, registered as ``name`` (when ``register_models``)."""


def _params(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v)[:6000] for k, v in flatten(params).items()}


def _now_ms() -> int:
    return int(time.time() * 1000)


class _LiveRun(RunLogger):
    """A run logged to MLflow as the job goes."""

    def __init__(self, job_id: str, client: Any, run_id: str, lock: Path | None):
        super().__init__(job_id)
        self._client = client
        self.run_id = run_id
        self._lock = lock

    @property
    def active(self) -> bool:
        return True

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in _params(params).items()]
        with _file_lock(self._lock):
            for start in range(0, len(items), 100):
                self._client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        with _file_lock(self._lock):
            self._client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        with _file_lock(self._lock):
            self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with _file_lock(self._lock):
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Mapping[str, Any], name: str) -> None:
        with _file_lock(self._lock):
            self._client.log_dict(self.run_id, dict(obj), name)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        with _file_lock(self._lock):
            self._client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_model(self, kind: str, folder: str | Path, name: str, artifact_path: str) -> None:
        if self.register_models:
            with _file_lock(self._lock):
                _log_model(self._client, self.run_id, kind, folder, name, artifact_path)


def _log_model(client: Any, run_id: str, kind: str, folder, name: str, artifact_path: str):
    from cytofm.tracking.models import log_model

    return log_model(client, run_id, kind, folder, name, artifact_path)


def _write_json(path: Path, obj: Any) -> None:
    """Atomic: a reader (the flush) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, default=str))
    os.replace(tmp, path)


class _SpoolRun(RunLogger):
    """A run written to ``<spool>/<job_id>/`` for :func:`flush_spool` to send later: no mlflow
    import in the job. ``run.json`` holds everything but metrics (``metrics.jsonl``, appended)
    and files (``artifacts/``); its ``status`` is written last."""

    def __init__(self, job_id: str, folder: Path, record: dict[str, Any]):
        super().__init__(job_id)
        self.folder = folder
        self.record = record
        self._metrics_lock = threading.Lock()  # the system-metrics thread appends too
        self._save()

    @property
    def active(self) -> bool:
        return True

    def _save(self) -> None:
        _write_json(self.folder / "run.json", self.record)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.record["params"].update(_params(params))
        self._save()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = _now_ms()
        lines = "".join(
            json.dumps([k, float(v), now, step or 0]) + "\n" for k, v in metrics.items()
        )
        with self._metrics_lock, open(self.folder / "metrics.jsonl", "a") as fh:
            fh.write(lines)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.record["tags"].update({k: str(v) for k, v in tags.items()})
        self._save()

    def _artifacts(self, artifact_path: str | None) -> Path:
        dest = self.folder / "artifacts" / (artifact_path or "")
        dest.mkdir(parents=True, exist_ok=True)
        return dest

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        shutil.copy2(path, self._artifacts(artifact_path) / Path(path).name)

    def log_dict(self, obj: Mapping[str, Any], name: str) -> None:
        path = self._artifacts(None) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(obj), indent=2, default=str))

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        shutil.copytree(folder, self._artifacts(artifact_path), dirs_exist_ok=True)

    def log_model(self, kind: str, folder: str | Path, name: str, artifact_path: str) -> None:
        if self.register_models:  # logged from the folder when the run is sent
            model = {"kind": kind, "folder": str(Path(folder).resolve()), "name": name}
            self.record.setdefault("models", []).append({**model, "artifact_path": artifact_path})
            self._save()

    def close(self, status: str) -> None:
        self.record.update(status=status, end_time=_now_ms())
        self._save()


def _experiment_id(client: Any, name: str, artifact_root: str | None) -> str:
    """The experiment's id, creating it if needed. Parallel jobs on a tracking server may race
    to create it (no file lock there): the loser reads the winner's."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def close_dead_runs(client: Any, experiment_id: str, run_name: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this job (same run name) whose process, on this host,
    no longer exists: what a job killed by SIGKILL or a lost node leaves behind. Runs of other
    hosts are left alone (their processes cannot be checked from here). Returns their ids."""
    if "'" in run_name:
        return []
    host, closed = socket.gethostname(), []
    try:
        found = client.search_runs(
            [experiment_id],
            filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'RUNNING'",
            max_results=100,
        )
        for r in found:
            pid = int(r.data.tags.get("cytofm.pid", "0") or 0)
            if r.data.tags.get("cytofm.host") == host and pid > 0 and not _alive(pid):
                client.set_terminated(r.info.run_id, status="KILLED")
                closed.append(r.info.run_id)
    except Exception:  # housekeeping never fails a job
        log.exception("could not check for runs of killed jobs")
    if closed:
        log.info("marked %d run(s) of killed earlier attempts KILLED: %s", len(closed), closed)
    return closed


@contextlib.contextmanager
def job_run(
    stage: str,
    *,
    tracking: TrackingConfig | None = None,
    results_dir: str | Path = "results",
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
    inputs: Mapping[str, Any] | None = None,
    live: bool = False,
    system_metrics: bool = False,
) -> Iterator[RunLogger]:
    """Open one run for a job; it ends FINISHED, or FAILED if the body raises.

    Tags always include the stage, job id, config hash, git commit and pipeline invocation id,
    plus the job ids and checksums of the pipeline artifacts among ``inputs`` (name -> path or
    paths); callers add the rule and wildcards. Params are the stage's resolved config,
    flattened. Inside the block, every provenance record carries the job id and the input
    lineage. With ``CYTOFM_MLFLOW_SPOOL`` set and ``live`` false the run is spooled (see the
    module's doc); otherwise it is logged to MLflow as the job goes. ``system_metrics``
    (long jobs) samples CPU, memory and GPU use every ``tracking.system_metrics_s`` seconds.
    """
    tracking = tracking or TrackingConfig()
    uri = resolve_tracking_uri(tracking, results_dir)
    lineage = input_lineage(inputs or {})
    job_id = uuid.uuid4().hex
    if uri.lower() == "none":
        with bind_job(job_id, None, compact(lineage)):
            yield RunLogger(job_id)
        return

    name = run_name or stage
    all_tags = {
        "cytofm.stage": stage,
        "cytofm.job_id": job_id,
        "cytofm.git_commit": git_commit(),
        "cytofm.config_hash": config_hash(params or {}),
        "cytofm.invocation_id": invocation_id() or "none",
        "cytofm.host": socket.gethostname(),
        "cytofm.pid": str(os.getpid()),
        **lineage_tags(lineage),
    }
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    all_tags.update(source_tags(all_tags))
    spool = os.environ.get(SPOOL_ENV, "").strip()
    lock, artifact_root = _store_of(uri)
    if spool and not live:
        logger: RunLogger = _SpoolRun(
            job_id,
            Path(spool) / job_id,
            {
                "format": 1,
                "tracking_uri": uri,
                "experiment": tracking.experiment,
                "artifact_root": artifact_root,
                "run_name": name,
                "start_time": _now_ms(),
                "end_time": None,
                "status": "RUNNING",
                "tags": all_tags,
                "params": {},
                "mlflow_run_id": None,
            },
        )
    else:
        from mlflow.tracking import MlflowClient

        if lock is not None:
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(lock):
            client = MlflowClient(tracking_uri=uri)
            experiment_id = _experiment_id(client, tracking.experiment, artifact_root)
            close_dead_runs(client, experiment_id, name)
            _nest(client, experiment_id, all_tags, uri, tracking.experiment)
            run = client.create_run(experiment_id, run_name=name, tags=all_tags)
        logger = _LiveRun(job_id, client, run.info.run_id, lock)
    logger.register_models = tracking.register_models
    status = "FAILED"
    sampler = None
    if system_metrics and tracking.system_metrics_s > 0:
        sampler = SystemSampler(logger.log_metrics, tracking.system_metrics_s).start()
    try:
        if params:
            logger.log_params(params)
        if lineage:
            logger.log_dict(lineage, "lineage.json")
        with bind_job(job_id, logger.run_id, compact(lineage)):
            yield logger
        status = "FINISHED"
    finally:
        if sampler is not None:
            sampler.stop()
        try:
            if isinstance(logger, _SpoolRun):
                logger.close(status)
            else:
                with _file_lock(lock):
                    client.set_terminated(logger.run_id, status=status)
        except Exception:  # never hide the job's own error behind a tracking error
            log.exception("could not close the run of job %s", job_id)


# -- sending spooled runs ----------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_change_ms(folder: Path) -> int:
    stamps = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()]
    return int(max(stamps, default=folder.stat().st_mtime) * 1000)


def _ended(record: Mapping[str, Any], final: bool, everywhere: bool) -> bool:
    """Whether a RUNNING record belongs to a job that can no longer finish: its process is gone
    (this host), or the workflow that started it has ended (``final``, same invocation), or the
    caller knows nothing runs any more (``everywhere``)."""
    tags = record.get("tags", {})
    if tags.get("cytofm.host") == socket.gethostname():
        pid = int(tags.get("cytofm.pid", "0") or 0)
        return pid <= 0 or not _alive(pid)
    if everywhere:
        return True
    return final and tags.get("cytofm.invocation_id") == (invocation_id() or "none")


def _nest(
    client: Any,
    experiment_id: str,
    tags: dict[str, str],
    uri: str,
    experiment: str,
    markers: Path | None = None,
    known: dict[tuple, str | None] | None = None,
) -> None:
    """Point a job's run at its invocation's parent run (found or created, or taken from
    ``known``), and leave the marker the workflow's end closes that parent by."""
    invocation = tags.get("cytofm.invocation_id", "none")
    key = (uri, experiment_id, invocation)
    if known is not None and key in known:
        parent = known[key]
    else:
        parent = parent_run(client, experiment_id, invocation, _now_ms())
        if parent is not None:
            record_parent(parent, uri, experiment, invocation, markers)
        if known is not None:
            known[key] = parent
    if parent is not None:
        tags["mlflow.parentRunId"] = parent


def _send(
    client: Any,
    experiment_id: str,
    folder: Path,
    record: dict[str, Any],
    parents: dict[tuple, str | None] | None = None,
) -> str:
    from mlflow.entities import Metric, Param

    markers = folder.parent / PARENTS_DIR
    tags, uri, experiment = record["tags"], record["tracking_uri"], record["experiment"]
    _nest(client, experiment_id, tags, uri, experiment, markers, parents)
    if record.get("mlflow_run_id"):  # an earlier flush stopped half-way through this one
        with contextlib.suppress(Exception):
            client.delete_run(record["mlflow_run_id"])
    run = client.create_run(
        experiment_id,
        start_time=record["start_time"],
        tags=record["tags"],
        run_name=record["run_name"],
    )
    run_id = run.info.run_id
    record["mlflow_run_id"] = run_id
    _write_json(folder / "run.json", record)
    params = [Param(k, v) for k, v in record["params"].items()]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    metrics_file = folder / "metrics.jsonl"
    if metrics_file.is_file():
        rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line]
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in rows]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
    if (folder / "artifacts").is_dir():
        client.log_artifacts(run_id, str(folder / "artifacts"))
    for model in record.get("models", []) if record["status"] == "FINISHED" else []:
        try:
            _log_model(client, run_id, **model)
        except Exception as err:  # a model folder removed since: the run is still sent
            log.warning("could not log model %s from %s: %s", model["name"], model["folder"], err)
    client.set_terminated(run_id, status=record["status"], end_time=record["end_time"])
    return run_id


def flush_spool(
    spool: str | Path, *, final: bool = False, everywhere: bool = False
) -> dict[str, int]:
    """Send the spooled runs of ended jobs to MLflow, oldest first, and delete them.

    A job killed before it could close its run (SIGKILL, a lost node) is sent as KILLED once its
    process is gone, or, for jobs on other hosts, once the workflow that started it has ended
    (``final``), or at once with ``everywhere`` (the caller knows no job runs). Runs of jobs still
    running stay. Sending stops at the first error (a tracking
    server that is down) and keeps what is left for the next flush; it never raises. Returns
    counts: ``sent``, ``killed`` (among sent), ``left``.
    """
    spool = Path(spool)
    counts = {"sent": 0, "killed": 0, "left": 0}
    folders = sorted(p for p in spool.glob("*") if (p / "run.json").is_file())
    if not folders:
        return counts
    pending = []
    for folder in folders:
        record = _read_json(folder / "run.json")
        if not isinstance(record, dict) or record.get("format") != 1:
            counts["left"] += 1
            continue
        if record["status"] == "RUNNING":
            if not _ended(record, final, everywhere):
                counts["left"] += 1
                continue
            record.update(status="KILLED", end_time=_last_change_ms(folder))
        pending.append((record["start_time"], folder, record))
    if not pending:
        return counts
    flush_lock = spool / ".flush.lock"
    with open(flush_lock, "a") as guard:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process is sending them
            counts["left"] += len(pending)
            return counts
        from mlflow.tracking import MlflowClient

        clients: dict[tuple, tuple[Any, str]] = {}
        parents: dict[tuple, str | None] = {}
        pending.sort(key=lambda item: item[0])
        for i, (_, folder, record) in enumerate(pending):
            uri = record["tracking_uri"]
            lock, _ = _store_of(uri)
            try:
                with _file_lock(lock):
                    key = (uri, record["experiment"])
                    if key not in clients:
                        client = MlflowClient(tracking_uri=uri)
                        exp = _experiment_id(client, record["experiment"], record["artifact_root"])
                        clients[key] = (client, exp)
                    client, exp = clients[key]
                    _send(client, exp, folder, record, parents)
                shutil.rmtree(folder, ignore_errors=True)
            except Exception as err:  # keep the rest for the next flush
                log.warning(
                    "could not send spooled MLflow runs to %s (%s: %s); %d kept in %s, sent "
                    "by the next workflow run or `python -m cytofm.tracking flush`",
                    uri,
                    type(err).__name__,
                    err,
                    len(pending) - i,
                    spool,
                )
                counts["left"] += len(pending) - i
                break
            counts["sent"] += 1
            counts["killed"] += record["status"] == "KILLED"
    _tidy(spool)
    return counts


def _tidy(spool: Path) -> None:
    """Remove the spool once nothing but its lock is left in it."""
    if spool.is_dir() and not any(p.name != ".flush.lock" for p in spool.iterdir()):
        shutil.rmtree(spool, ignore_errors=True)


def end_invocation(spool: str | Path, status: str) -> dict[str, int]:
    """The workflow's end: send the spooled runs of ended jobs, then close the parent runs of
    this invocation (with ``status``: FINISHED or FAILED) and of earlier ones that were killed
    before they could. Never raises."""
    spool = Path(spool)
    counts = flush_spool(spool, final=True)
    waiting = {
        (_read_json(p / "run.json") or {}).get("tags", {}).get("cytofm.invocation_id")
        for p in spool.glob("*")
        if (p / "run.json").is_file()
    }
    counts["parents_closed"] = close_invocations(spool / PARENTS_DIR, status, waiting)
    _tidy(spool)
    return counts


def main(argv: list[str] | None = None) -> int:
    """``python -m cytofm.tracking flush [results]``: send what a workflow left spooled."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cytofm.tracking", description=main.__doc__)
    parser.add_argument("command", choices=["flush"])
    parser.add_argument("results", nargs="?", default="results", help="the results folder")
    parser.add_argument(
        "--ended",
        action="store_true",
        help="no job of these results runs anywhere now: runs still marked running on other "
        "hosts (a cluster's nodes) are sent as KILLED",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    counts = flush_spool(Path(args.results) / "mlflow-spool", everywhere=args.ended)
    print(
        f"sent {counts['sent']} run(s) to MLflow ({counts['killed']} of killed jobs), "
        f"{counts['left']} left",
        file=sys.stderr,
    )
    return 0 if counts["left"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
