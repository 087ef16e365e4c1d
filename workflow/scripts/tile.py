"""Adapter for rule `tile`: snakemake object -> cytofm.stages.tile.run_tile."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.config import TilingConfig, from_mapping  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.tile import run_tile  # noqa: E402
from cytofm.wsi.fields import is_specimen  # noqa: E402

sm = snakemake  # noqa: F821
# the file Snakemake localised (a URL in the sheet is fetched by its storage plugin); a missing
# local file has no input, and the path itself then fails with the fix
# a specimen of fields (a folder or glob) is read from where the sheet names it
path = sm.params.path
slide = path if is_specimen(path) else (sm.input.get("slide") or path)
run_tile(
    slide_path=slide,
    slide_id=sm.wildcards.slide,
    mpp=sm.params.mpp,
    cfg=from_mapping(TilingConfig, sm.params.tiling, "tiling"),
    out_store=sm.output.store,
    out_qc=sm.output.qc,
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
    source=sm.params.path,
    threads=sm.threads,
)
