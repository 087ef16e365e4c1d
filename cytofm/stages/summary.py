"""Stage ``eval_summary``: one task's result JSONs -> summary.csv and its plot (few-shot curves,
or slide/attention AUROC for a slide-level task)."""

from __future__ import annotations

from pathlib import Path

from cytofm.eval.compare import compare_results
from cytofm.eval.summary import summary_table
from cytofm.report.figures import plot_fewshot, plot_mil
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
):
    """``plot``: ``fewshot`` (patch-level curves) or ``mil`` (slide and attention AUROC).
    ``out_comparisons``: the paired backbone comparisons of every result block (CSV)."""
    job = job or JobContext()
    with job.run("eval_summary", {"task": task, "n_results": len(result_jsons)}) as run:
        table = summary_table(list(result_jsons))
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_csv, index=False, float_format="%.4f")
        (plot_mil if plot == "mil" else plot_fewshot)(table, out_png)
        run.log_artifact(out_csv)
        run.log_artifact(out_png)
        if out_comparisons:
            comparisons = compare_results(list(result_jsons), n_boot=n_boot)
            comparisons.to_csv(out_comparisons, index=False, float_format="%.4g")
            run.log_artifact(out_comparisons)
    return table
