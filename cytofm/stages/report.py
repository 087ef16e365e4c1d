"""Stage ``report``: every result of a run -> ``results/report/`` (tables, figures, index.html).

It answers "which backbone for my cytology task, and with how many labels?"; the sections are
built by :class:`cytofm.report.build.ReportBuilder`. Tables and figures are logged to the job's
MLflow run.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cytofm import __version__
from cytofm.config import ReportConfig
from cytofm.provenance import git_commit, invocation_id
from cytofm.report.build import ReportBuilder, load_comparisons
from cytofm.report.html import render_page
from cytofm.results import read_result
from cytofm.stages.context import JobContext

__all__ = ["run_report"]

log = logging.getLogger(__name__)


def run_report(
    eval_jsons: Sequence[str | Path],
    out_dir: str | Path,
    *,
    embeddings: Mapping[str, Mapping[str, Mapping[str, str]]] | None = None,
    slide_features: Mapping[str, Mapping[str, str]] | None = None,
    slide_meta: Mapping[str, Mapping[str, str]] | None = None,
    pretrain_dirs: Sequence[str | Path] = (),
    qc: Sequence[tuple[str, str | Path]] = (),
    comparisons: Sequence[str | Path] = (),
    detection: Sequence[str | Path] = (),
    truth: Sequence[str | Path] = (),
    predictions: Sequence[str | Path] = (),
    extras: Mapping[str, Mapping[str, Any]] | None = None,
    cfg: ReportConfig | None = None,
    job: JobContext | None = None,
) -> dict[str, Any]:
    """Build the report folder from the run's result JSONs and the files beside them.

    ``embeddings``: task -> backbone -> {"features", "dataset"} stores; ``slide_features``:
    backbone -> slide -> cell feature store; ``slide_meta``: slide -> sheet metadata (stain);
    ``pretrain_dirs``: exported backbone folders (``training.png`` sits beside each);
    ``qc``: (slide id, QC thumbnail) pairs; ``comparisons``: the tasks' paired-comparison
    CSVs (``eval/<task>/comparisons.csv``); ``detection``: the cells stage's per-slide QC
    JSONs (``qc/<slide>.cells.json``), for the detection table, and ``truth`` the scores
    against cell_truth tables (``qc/detection.json``; pictures in ``qc/detection/``);
    ``predictions``: the slide tasks' prediction tables; ``extras``: the label
    trees, calibration and batch-leak files per task (``trees``, ``calibration``,
    ``robustness``: see :meth:`ReportBuilder.tasks`). Returns what was written.
    """
    cfg = cfg or ReportConfig()
    job = job or JobContext()
    out = Path(out_dir)
    by_task: dict[str, list[Path]] = defaultdict(list)
    for path in eval_jsons:
        by_task[read_result(path)["task"]].append(Path(path))
    with job.run("report", {"report": cfg.to_dict(), "n_results": len(eval_jsons)}) as run:
        page = ReportBuilder(out, cfg)
        compared = load_comparisons(comparisons)
        page.tasks(by_task, compared, embeddings, **(extras or {}))
        page.overview(compared)
        if slide_features:
            page.slide_cells(slide_features, slide_meta)
        page.predictions(predictions)
        if pretrain_dirs:
            page.pretraining(pretrain_dirs)
        if qc or detection:
            page.quality_control(qc, detection, truth)
        index = render_page(
            "cytofm results report", _meta(eval_jsons), page.sections, out / "index.html"
        )
        run.log_artifact(index, "report")
        run.log_artifacts(page.tabs, "report/tables")
        run.log_artifacts(page.figs, "report/figures")
        written = page.written
        run.log_metrics({"n_figures": len(written["figures"]), "n_tables": len(written["tables"])})
    log.info(
        f"report: {len(written['tables'])} tables, {len(written['figures'])} figures -> {index}"
    )
    return written


def _meta(eval_jsons) -> dict[str, str]:
    """The report's header: version, commit, invocation and the number of results."""
    return {
        "cytofm": __version__,
        "git commit": git_commit(),
        "invocation": invocation_id() or "-",
        "results": str(len(eval_jsons)),
    }
