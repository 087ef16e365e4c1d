"""Adapter for rule `pretrain_probe`: linear probe, pretrained vs. random weights."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.config import EvalConfig, TaskConfig, from_mapping  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.probe import run_probe  # noqa: E402

sm = snakemake  # noqa: F821
run_probe(
    backbone_dir=sm.input.backbone,
    dataset_store=sm.input.dataset[0],
    out_json=sm.output[0],
    task=from_mapping(TaskConfig, sm.params.task, "probe task"),
    evaluate=from_mapping(EvalConfig, sm.params.evaluate, "evaluate"),
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
