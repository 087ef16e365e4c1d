"""MLflow tracking: the only module of cytofm that imports mlflow.

Every Snakemake job opens exactly one run through :func:`job_run`. The default store is a SQLite
file under the results folder; ``MLFLOW_TRACKING_URI`` (or ``mlflow.tracking_uri`` in config)
points elsewhere, and the URI ``none`` switches tracking off. Writes to a SQLite store are
serialised with a file lock because parallel Snakemake jobs share one database file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cytofm.config import TrackingConfig
from cytofm.lineage import compact, input_lineage, lineage_tags
from cytofm.provenance import bind_job, config_hash, git_commit, invocation_id

__all__ = ["RunLogger", "flatten", "job_run", "resolve_tracking_uri"]

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
    """Thin handle on one MLflow run. With tracking off, every call is a no-op."""

    def __init__(self, client: Any = None, run_id: str | None = None, lock: Path | None = None):
        self._client = client
        self.run_id = run_id
        self._lock = lock

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock is None:
            yield
            return
        self._lock.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @property
    def active(self) -> bool:
        return self._client is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        with self._locked():
            for start in range(0, len(items), 100):
                self._client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        with self._locked():
            self._client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        with self._locked():
            self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.active:
            return
        with self._locked():
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Mapping[str, Any], name: str) -> None:
        """A JSON artifact ``name`` holding ``obj``."""
        if not self.active:
            return
        with self._locked():
            self._client.log_dict(self.run_id, dict(obj), name)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Every file under ``folder`` (PNG sets such as heatmaps), keeping the layout."""
        if not self.active:
            return
        with self._locked():
            self._client.log_artifacts(self.run_id, str(folder), artifact_path)


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
) -> Iterator[RunLogger]:
    """Open one MLflow run for a job; it ends FINISHED, or FAILED if the body raises.

    Tags always include the stage, config hash, git commit and pipeline invocation id, plus the
    run ids and checksums of the pipeline artifacts among ``inputs`` (name -> path or paths);
    callers add the rule and wildcards. Params are the stage's resolved config, flattened.
    Inside the block, every provenance record carries this run's id and the input lineage.
    """
    tracking = tracking or TrackingConfig()
    uri = resolve_tracking_uri(tracking, results_dir)
    lineage = input_lineage(inputs or {})
    if uri.lower() == "none":
        with bind_job(None, compact(lineage)):
            yield RunLogger()
        return

    from mlflow.tracking import MlflowClient

    lock = None
    artifact_root = None
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = db.with_name(db.name + ".lock")
        artifact_root = (db.parent / "mlflow-artifacts").resolve().as_uri()

    bootstrap = RunLogger(lock=lock)
    with bootstrap._locked():
        client = MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, tracking.experiment, artifact_root)
        all_tags = {
            "cytofm.stage": stage,
            "cytofm.git_commit": git_commit(),
            "cytofm.config_hash": config_hash(params or {}),
            "cytofm.invocation_id": invocation_id() or "none",
            "cytofm.host": socket.gethostname(),
            "cytofm.pid": str(os.getpid()),
            **lineage_tags(lineage),
        }
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        close_dead_runs(client, experiment_id, run_name or stage)
        run = client.create_run(experiment_id, run_name=run_name or stage, tags=all_tags)
    logger = RunLogger(client, run.info.run_id, lock)
    status = "FAILED"
    try:
        if params:
            logger.log_params(params)
        if lineage:
            with logger._locked():
                client.log_dict(run.info.run_id, lineage, "lineage.json")
        with bind_job(run.info.run_id, compact(lineage)):
            yield logger
        status = "FINISHED"
    finally:
        try:
            with logger._locked():
                client.set_terminated(run.info.run_id, status=status)
        except Exception:  # never hide the job's own error behind a tracking error
            log.exception("could not close MLflow run %s", run.info.run_id)
