"""The spool: runs written to files by jobs that must not pay for importing mlflow, and sent to
MLflow in one process when the workflow ends.

Inside a workflow (``CYTOFM_MLFLOW_SPOOL`` set, see workflow/rules/common.smk) a job's run is a
folder ``<spool>/<job_id>/``: a ``run.json`` (tags, params, status, times), a ``metrics.jsonl``
and an ``artifacts/`` folder, written with no mlflow import. :func:`flush_spool` sends the
finished runs (and those of jobs killed before they could finish, as KILLED) and deletes them;
:func:`end_invocation`, at the workflow's end, also closes the invocation's parent run.
What an interrupted workflow left is sent by the next one, or by hand with
``cytofm mlflow flush <results>`` (:func:`main`; also ``python -m cytofm.tracking flush``).
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cytofm.provenance import invocation_id
from cytofm.tracking.invocation import close_invocations
from cytofm.tracking.runs import (
    PARENTS_DIR,
    RunLogger,
    _alive,
    _experiment_id,
    _log_model,
    _nest,
    _now_ms,
    _params,
)
from cytofm.tracking.store import file_lock as _file_lock
from cytofm.tracking.store import store_of as _store_of

__all__ = ["end_invocation", "flush_spool", "main"]

log = logging.getLogger(__name__)


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
                    "by the next workflow run or `cytofm mlflow flush`",
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
