"""Adapter for rule `model_card`: the backbone beside its README.md card (hub layout)."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.model_card import run_model_card  # noqa: E402

sm = snakemake  # noqa: F821
run_model_card(
    sm.input.backbone,
    sm.output[0],
    sm.wildcards.model,
    probe_json=sm.input.get("probe"),
    summary_csvs=list(sm.input.summaries),
    backbones=sm.params.backbones,
    synthetic=sm.params.synthetic,
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
