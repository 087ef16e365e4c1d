"""Adapter for rule `export_features`: snakemake object -> cytofm.stages.export."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.export import run_export_features  # noqa: E402

sm = snakemake  # noqa: F821
run_export_features(
    features_store=sm.params.features,
    instances_store=sm.input.store,
    out_trident=sm.output.trident,
    out_stamp=sm.output.stamp,
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
