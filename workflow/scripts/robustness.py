"""Adapter for rule `robustness`: a task's batch-leak probe and robustness index."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.config import EvalConfig, TaskConfig, from_mapping  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.robustness import run_robustness  # noqa: E402

sm = snakemake  # noqa: F821
run_robustness(
    from_mapping(TaskConfig, sm.params.task, f"evaluate.tasks.{sm.wildcards.task}"),
    from_mapping(EvalConfig, sm.params.evaluate, "evaluate"),
    sm.wildcards.backbone,
    sm.input.dataset,
    sm.input.features,
    sm.output[0],
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
