"""Adapter for rule `eval_summary`: a task's results table and few-shot curves."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.summary import run_summary  # noqa: E402

sm = snakemake  # noqa: F821
run_summary(
    list(sm.input),
    sm.output.csv,
    sm.output.png,
    task=dict(sm.wildcards).get("task") or dict(sm.wildcards)["stask"],
    plot=dict(sm.params).get("plot", "fewshot"),
    out_comparisons=sm.output.comparisons,
    n_boot=sm.params.bootstrap,
    checkpoints=sm.params.checkpoints,
    out_hierarchy=dict(sm.output).get("hierarchy"),
    out_calibration=sm.output.calibration,
    out_reliability=sm.output.reliability,
    conformal_alpha=dict(sm.params).get("conformal_alpha", 0.0),
    hierarchy=dict(sm.params).get("hierarchy"),
    screening=dict(sm.params).get("screening", ""),
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
