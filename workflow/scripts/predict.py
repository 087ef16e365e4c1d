"""Adapter for rule `predict`: a slide task's final model -> one unlabelled slide's prediction."""

from pathlib import Path

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.predict import run_predict  # noqa: E402
from cytofm.wsi.fields import is_specimen  # noqa: E402

sm = snakemake  # noqa: F821
# the slide for the heatmap's thumbnail: a fetched copy of a URL; a specimen's folder or glob
path = sm.params.path
slide = path if is_specimen(path) else (sm.input.get("slide") or path)
run_predict(
    model_dir=Path(sm.input.model) / "model",
    slide_id=sm.wildcards.slide,
    features_store=sm.params.features,
    instances_store=sm.input.instances,
    out_json=sm.output.json,
    out_attention=sm.output.attention,
    out_heatmap=sm.output.heatmap,
    slide_path=slide,
    mpp=sm.params.mpp,
    thumbnail_mpp=sm.params.thumbnail_mpp,
    cell_head_dir=sm.input.get("cell_head"),
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
