"""Adapter for rule `demo_crops`: the labelled synthetic cell-crop collection."""

from pathlib import Path

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.config import DemoConfig, from_mapping  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.demo import run_demo_crops  # noqa: E402

sm = snakemake  # noqa: F821
run_demo_crops(
    cfg=from_mapping(DemoConfig, sm.params.demo, "demo"),
    out_dir=Path(sm.output.table).parent,
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
