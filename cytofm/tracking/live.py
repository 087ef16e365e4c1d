"""Runs logged to MLflow as the job goes, and :func:`job_run`, the one way a job opens its run.

:func:`job_run` logs live when asked (long jobs such as pretraining, whose curves one watches)
or when no spool is set (a job run by hand); inside a workflow it spools the run instead
(``spool``). A live job opens MLflow's store itself: it finds or creates the experiment, marks
KILLED the runs its own killed earlier attempts left RUNNING (:func:`close_dead_runs`), nests
its run under the invocation's parent run and logs every call at once, serialised with the
other jobs by the store's file lock (SQLite).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cytofm.config import TrackingConfig
from cytofm.lineage import compact, input_lineage, lineage_tags
from cytofm.provenance import bind_job, config_hash, git_commit, invocation_id
from cytofm.tracking.invocation import source_tags
from cytofm.tracking.runs import (
    SPOOL_ENV,
    RunLogger,
    _alive,
    _experiment_id,
    _log_model,
    _nest,
    _now_ms,
    _params,
    resolve_tracking_uri,
)
from cytofm.tracking.spool import _SpoolRun
from cytofm.tracking.store import file_lock as _file_lock
from cytofm.tracking.store import store_of as _store_of
from cytofm.tracking.system import SystemSampler

__all__ = ["close_dead_runs", "job_run"]

log = logging.getLogger(__name__)


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
    lineage. With ``CYTOFM_MLFLOW_SPOOL`` set and ``live`` false the run is spooled (see
    ``cytofm.tracking.spool``); otherwise it is logged to MLflow as the job goes.
    ``system_metrics`` (long jobs) samples CPU, memory and GPU use every
    ``tracking.system_metrics_s`` seconds.
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
