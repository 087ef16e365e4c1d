"""What a job's run is, whether it is logged live or spooled: the :class:`RunLogger` handle
(tracking switched off), where runs go (:func:`resolve_tracking_uri`), params as MLflow takes
them (:func:`flatten`), and the steps that both a live run (``live``) and a spooled one sent
later (``spool``) take in MLflow: finding the experiment, nesting under the invocation's
parent run, logging a model. It imports no mlflow at the top (only where a run reaches MLflow),
and neither ``live`` nor ``spool``: they import it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cytofm.config import TrackingConfig
from cytofm.tracking.invocation import parent_run, record_parent

__all__ = ["PARENTS_DIR", "SPOOL_ENV", "RunLogger", "flatten", "resolve_tracking_uri"]


# the spool folder of the running workflow; jobs started without it log to MLflow directly
SPOOL_ENV = "CYTOFM_MLFLOW_SPOOL"
# in the spool folder: markers of the parent runs in use (cytofm/tracking/invocation.py)
PARENTS_DIR = ".parents"


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


def _log_model(client: Any, run_id: str, kind: str, folder, name: str, artifact_path: str):
    from cytofm.tracking.models import log_model

    return log_model(client, run_id, kind, folder, name, artifact_path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


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
