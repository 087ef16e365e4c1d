"""Adapter for rule `import_dataset`: a labelled collection -> patch store."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.config import DatasetConfig, from_mapping  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.dataset import run_import  # noqa: E402

sm = snakemake  # noqa: F821
run_import(
    cfg=from_mapping(DatasetConfig, {"name": sm.wildcards.dataset, **sm.params.dataset}),
    out_store=sm.output[0],
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
