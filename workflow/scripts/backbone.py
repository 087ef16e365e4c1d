"""Adapter for rule `backbone`: one configured backbone, built once (card + TorchScript copy)."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

import torch  # noqa: E402

from cytofm.config import from_mapping  # noqa: E402
from cytofm.eval.backbones import BackboneSpec  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.embed import run_backbone  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(sm.threads)
spec = sm.params.backbone
run_backbone(
    from_mapping(BackboneSpec, spec, f"backbones.{spec['name']}"),
    sm.output[0],
    pretrained_dir=sm.input.get("pretrained"),
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
