"""Adapter for rule `cells`: snakemake object -> cytofm.stages.cells.run_cells."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.config import CellsConfig, from_mapping  # noqa: E402
from cytofm.stages.cells import run_cells  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.wsi.fields import is_specimen  # noqa: E402

sm = snakemake  # noqa: F821
# the file Snakemake localised (a URL in the sheet is fetched by its storage plugin); a missing
# local file has no input, and the path itself then fails with the fix
# a specimen of fields (a folder or glob) is read from where the sheet names it
path = sm.params.path
slide = path if is_specimen(path) else (sm.input.get("slide") or path)
run_cells(
    slide_path=slide,
    slide_id=sm.wildcards.slide,
    mpp=sm.params.mpp,
    tiles_store=sm.input.tiles,
    cfg=from_mapping(CellsConfig, sm.params.cells, "cells"),
    out_store=sm.output.store,
    out_gallery=sm.output.gallery,
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
    sheet_stain=sm.params.stain,
    out_summary=sm.output.summary,
    threads=sm.threads,
)
