"""Stage ``eval_summary``: one task's result JSONs -> summary.csv and its plot (few-shot curves,
or slide/attention AUROC for a slide-level task)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cytofm.eval.calibration import calibration_table
from cytofm.eval.compare import compare_results
from cytofm.eval.hierarchy import hierarchy_table
from cytofm.eval.predictions import LONG_COLUMNS
from cytofm.eval.summary import summary_table
from cytofm.report.figures import placeholder, plot_fewshot, plot_mil, plot_reliability
from cytofm.stages.context import JobContext

__all__ = ["run_summary"]


def run_summary(
    result_jsons,
    out_csv,
    out_png,
    task: str,
    plot: str = "fewshot",
    out_comparisons=None,
    n_boot: int = 1000,
    job: JobContext | None = None,
    out_hierarchy=None,
    hierarchy: dict | None = None,
    screening: str = "",
    out_calibration=None,
    out_reliability=None,
    conformal_alpha: float = 0.0,
    checkpoints: dict | None = None,
):
    """``plot``: ``fewshot`` (patch-level curves) or ``mil`` (slide and attention AUROC).
    ``out_comparisons``: the paired backbone comparisons of every result block (CSV).
    ``out_hierarchy``: the task's label-tree metrics (CSV; only its header for a task
    without ``hierarchy``). ``out_calibration`` / ``out_reliability``: ECE and NLL before and
    after temperature scaling, conformal coverage at ``conformal_alpha`` (CSV), and the
    reliability diagrams (PNG; a note when no result kept calibrated predictions).
    ``checkpoints``: backbone -> [configured backbone, checkpoint index]; the summary and the
    comparisons pool a backbone's pretraining checkpoints (:mod:`cytofm.eval.checkpoints`)."""
    job = job or JobContext()
    with job.run("eval_summary", {"task": task, "n_results": len(result_jsons)}) as run:
        table = summary_table(list(result_jsons), checkpoints, n_boot=n_boot)
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_csv, index=False, float_format="%.4f")
        (plot_mil if plot == "mil" else plot_fewshot)(table, out_png)
        run.log_artifact(out_csv)
        run.log_artifact(out_png)
        if out_comparisons:
            comparisons = compare_results(
                list(result_jsons), n_boot=n_boot, checkpoints=checkpoints
            )
            comparisons.to_csv(out_comparisons, index=False, float_format="%.4g")
            run.log_artifact(out_comparisons)
        if out_hierarchy:
            tree = (
                hierarchy_table(list(result_jsons), hierarchy, screening, n_boot=n_boot)
                if hierarchy
                else pd.DataFrame(columns=LONG_COLUMNS)
            )
            tree.to_csv(out_hierarchy, index=False, float_format="%.4g")
            run.log_artifact(out_hierarchy)
        if out_calibration:
            cal = calibration_table(list(result_jsons), conformal_alpha, n_boot=n_boot)
            cal.to_csv(out_calibration, index=False, float_format="%.4g")
            run.log_artifact(out_calibration)
        if out_reliability:
            if plot_reliability(list(result_jsons), out_reliability, task) is None:
                placeholder(out_reliability, "no calibrated predictions")
            run.log_artifact(out_reliability)
    return table
