"""MLflow tracking: the only part of cytofm that imports mlflow. This package: what a job's
run is in ``runs``, runs logged live and :func:`job_run` in ``live``, the spool in ``spool``,
the parent run of an invocation in ``invocation``, system metrics in ``system``, models in
``models``, the SQLite lock in ``store``; the names other code uses are imported from here.

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

from cytofm.tracking.invocation import PARENTS_ENV
from cytofm.tracking.live import close_dead_runs as close_dead_runs
from cytofm.tracking.live import job_run
from cytofm.tracking.runs import PARENTS_DIR, SPOOL_ENV, RunLogger, flatten, resolve_tracking_uri
from cytofm.tracking.spool import end_invocation, flush_spool
from cytofm.tracking.spool import main as main  # python -m cytofm.tracking (__main__.py)

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
