"""Adapter for rules `embed` (one patch store) and `embed_slides` (a shard of slides' stores and
its manifest): features with one backbone, loaded once."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

import torch  # noqa: E402

from cytofm.config import from_mapping  # noqa: E402
from cytofm.eval.backbones import BackboneSpec  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.embed import run_embed_many  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(sm.threads)
spec = sm.params.backbone
manifest = sm.output.get("manifest")
if manifest:  # embed_slides
    pairs = list(zip(sm.input.stores, sm.params.features, strict=True))
else:
    pairs = [(sm.input.store, sm.output[0])]
run_embed_many(
    from_mapping(BackboneSpec, spec, f"backbones.{spec['name']}"),
    pairs,
    backbone_dir=sm.input.backbone,
    pretrained_dir=sm.input.get("pretrained"),
    batch_size=sm.params.embed["batch_size"],
    precision=sm.params.embed["precision"],
    device=sm.params.embed["device"],
    num_workers=sm.config["embed"].get("num_workers", "auto"),  # not a param: no rerun
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
    manifest=manifest,
)
