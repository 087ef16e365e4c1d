"""One parent MLflow run per workflow invocation, with every job's run nested under it.

A ``snakemake`` invocation sets ``CYTOFM_INVOCATION_ID`` (workflow/rules/common.smk); the first
of its runs to reach MLflow (a live pretraining job, or the spool sent when the workflow ends)
finds or creates the parent run tagged ``cytofm.role = invocation`` with that id, and the job's
run gets ``mlflow.parentRunId``, which MLflow's UI shows as nesting. Whoever uses a parent
leaves a marker (``<results>/mlflow-spool/.parents/<invocation>.json``: where it lives), so the
workflow's end can close it with the workflow's status without asking MLflow when nothing was
logged.

Parallel jobs on a tracking server can race to create the parent: each creates, searches
again, and all keep the oldest, deleting the others they made.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cytofm.provenance import git_commit, invocation_id
from cytofm.tracking.store import file_lock, store_of

__all__ = [
    "PARENTS_ENV",
    "ROLE_TAG",
    "close_invocations",
    "parent_run",
    "record_parent",
    "source_tags",
]

# the folder of parent-run markers; set by the workflow, so live jobs leave one too
PARENTS_ENV = "CYTOFM_MLFLOW_PARENTS"
ROLE_TAG = "cytofm.role"

log = logging.getLogger(__name__)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return os.environ.get("USER", "unknown")


def source_tags(tags: Mapping[str, str] | None = None) -> dict[str, str]:
    """MLflow's standard tags for a run: who ran it, from what, at which commit. A workflow
    job's source is its rule (``snakemake.rule`` among ``tags``), anything else the script."""
    tags = tags or {}
    rule = tags.get("snakemake.rule")
    in_workflow = rule is not None and rule != "interactive"
    out = {
        "mlflow.user": _user(),
        "mlflow.source.name": f"snakemake rule {rule}"
        if in_workflow
        else Path(sys.argv[0] or "python").name,
        "mlflow.source.type": "JOB" if in_workflow else "LOCAL",
    }
    commit = tags.get("cytofm.git_commit") or git_commit()
    if commit != "unknown":
        out["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    return out


def _start_ms(invocation: str) -> int | None:
    """The invocation's start from its id (``20261130T230000Z-...``), when it has one."""
    try:
        stamp = _dt.datetime.strptime(invocation.split("-")[0], "%Y%m%dT%H%M%SZ")
    except ValueError:
        return None
    return int(stamp.replace(tzinfo=_dt.UTC).timestamp() * 1000)


def _find(client: Any, experiment_id: str, invocation: str) -> list[Any]:
    found = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`cytofm.invocation_id` = '{invocation}' and tags.`{ROLE_TAG}` = 'invocation'"
        ),
        max_results=50,
    )
    return sorted(found, key=lambda r: (r.info.start_time, r.info.run_id))


def parent_run(
    client: Any, experiment_id: str, invocation: str, start_time: int | None = None
) -> str | None:
    """The run id of ``invocation``'s parent run in this experiment, created when it has none
    (None for an id MLflow's search cannot quote)."""
    if not invocation or "'" in invocation or invocation == "none":
        return None
    found = _find(client, experiment_id, invocation)
    if found:
        return found[0].info.run_id
    tags = {
        ROLE_TAG: "invocation",
        "cytofm.invocation_id": invocation,
        "cytofm.git_commit": git_commit(),
        "cytofm.host": socket.gethostname(),
    }
    tags.update(source_tags({"snakemake.rule": "all", **tags}))
    tags["mlflow.source.name"] = "snakemake"
    start = _start_ms(invocation) or start_time
    mine = client.create_run(
        experiment_id, start_time=start, run_name=f"invocation {invocation}", tags=tags
    ).info.run_id
    kept = _find(client, experiment_id, invocation)[0].info.run_id
    if kept != mine:  # another job made one first
        client.delete_run(mine)
    return kept


def _marker_dir() -> Path | None:
    folder = os.environ.get(PARENTS_ENV, "").strip()
    return Path(folder) if folder else None


def record_parent(
    run_id: str, tracking_uri: str, experiment: str, invocation: str, folder: Path | None = None
) -> None:
    """Leave the marker the workflow's end closes the parent run by."""
    folder = folder or _marker_dir()
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{invocation}.json"
    if path.is_file():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps({"run_id": run_id, "tracking_uri": tracking_uri, "experiment": experiment})
    )
    os.replace(tmp, path)


def close_invocations(folder: str | Path, status: str, pending: set[str] = frozenset()) -> int:
    """End the parent runs marked in ``folder``: this invocation's with ``status`` (the
    workflow's: FINISHED or FAILED), those of earlier invocations that ended without closing
    theirs (a killed workflow) as KILLED, unless some of their runs wait in the spool
    (``pending``). Never raises; returns how many were closed."""
    folder = Path(folder)
    markers = sorted(folder.glob("*.json")) if folder.is_dir() else []
    current, closed = invocation_id(), 0
    for path in markers:
        invocation = path.stem
        if invocation in pending:
            continue
        try:
            marker = json.loads(path.read_text())
            from mlflow.tracking import MlflowClient

            uri = marker["tracking_uri"]
            end = None if invocation == current else int(path.stat().st_mtime * 1000)
            with file_lock(store_of(uri)[0]):
                MlflowClient(tracking_uri=uri).set_terminated(
                    marker["run_id"],
                    status=status if invocation == current else "KILLED",
                    end_time=end,
                )
        except Exception as err:  # tracking never fails a workflow
            log.warning("could not close the MLflow parent run of %s: %s", invocation, err)
            continue
        path.unlink(missing_ok=True)
        closed += 1
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return closed
