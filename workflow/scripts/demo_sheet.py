"""Adapter for rule `demo_sheet`: write the demo's slides.tsv as an example sample sheet."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.config import DemoConfig, from_mapping  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.demo import run_demo_sheet  # noqa: E402

sm = snakemake  # noqa: F821
run_demo_sheet(
    cfg=from_mapping(DemoConfig, sm.params.demo, "demo"),
    out_tsv=sm.output[0],
    job=JobContext.create(sm.config, sm.rule, inputs=sm.input),
)
