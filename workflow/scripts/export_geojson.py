"""Adapter for rule `export_geojson`: snakemake object -> cytofm.stages.export."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.config import ExportConfig, from_mapping  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.export import run_export_geojson  # noqa: E402

sm = snakemake  # noqa: F821
run_export_geojson(
    cells_store=sm.input.cells,
    tiles_store=sm.input.tiles,
    out=sm.output[0],
    cfg=from_mapping(ExportConfig, sm.params.export, "export"),
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
