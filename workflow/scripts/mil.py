"""Adapter for rule `mil`: slide task x backbone -> MIL result, attention, heatmaps, montages."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

import torch  # noqa: E402

from cytofm.config import EvalConfig, SlideTaskConfig, from_mapping  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.mil import run_mil  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(sm.threads)
task = sm.params.task
cohort = [
    {**row, "features": f, "instances": s}
    for row, f, s in zip(sm.params.cohort, sm.params.features, sm.input.instances, strict=True)
]
run_mil(
    from_mapping(SlideTaskConfig, task, f"evaluate.slide_tasks.{task['name']}"),
    from_mapping(EvalConfig, sm.params.evaluate, "evaluate"),
    sm.wildcards.backbone,
    cohort,
    sm.output.json,
    sm.output.dir,
    tolerance_um=sm.params.tolerance_um,
    thumbnail_mpp=sm.params.thumbnail_mpp,
    backbone_kind=sm.params.backbone_kind,
    exposure=sm.params.exposure,
    pretrained_dir=sm.input.get("pretrained"),
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
