"""Adapter for rule `demo_slide`: render one synthetic slide and its ground truth."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.config import DemoConfig, from_mapping  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.demo import run_demo_slide  # noqa: E402

sm = snakemake  # noqa: F821
run_demo_slide(
    cfg=from_mapping(DemoConfig, sm.params.demo, "demo"),
    slide_id=sm.wildcards.slide,
    out_slide=sm.output.slide,
    out_truth=sm.output.truth,
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
