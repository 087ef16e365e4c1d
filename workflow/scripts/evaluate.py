"""Adapter for rule `evaluate`: one task x backbone x protocol -> result JSON."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

import torch  # noqa: E402

from cytofm.config import EvalConfig, TaskConfig, from_mapping  # noqa: E402
from cytofm.eval.backbones import BackboneSpec  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.evaluate import run_evaluate  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(sm.threads)
task, spec = sm.params.task, sm.params.backbone
run_evaluate(
    from_mapping(TaskConfig, task, f"evaluate.tasks.{task['name']}"),
    from_mapping(EvalConfig, sm.params.evaluate, "evaluate"),
    sm.wildcards.protocol,
    from_mapping(BackboneSpec, spec, f"backbones.{spec['name']}"),
    sm.input.dataset,
    sm.output.json,
    out_predictions=sm.output.predictions,
    features_store=sm.input.get("features"),
    pretrained_dir=sm.input.get("pretrained"),
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
