"""Adapter for rule `pretrain`: iBOT pretraining (resumes from the model's checkpoint)."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

import torch  # noqa: E402

from cytofm.config import PretrainConfig, from_mapping  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.launch import resolve_nproc  # noqa: E402
from cytofm.stages.pretrain import run_pretrain  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(sm.threads)
run_pretrain(
    cfg=from_mapping(PretrainConfig, sm.params.pretrain, "pretrain"),
    stores=list(sm.input.stores),
    out_dir=sm.params.out_dir,
    knn_store=sm.input.knn[0] if sm.input.knn else None,
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
    # per node: the job's GPUs on one node, the GPUs of each node (gres) on several
    nproc=resolve_nproc(
        sm.params.nproc,
        getattr(sm.resources, "gpu", 0) if sm.params.nodes == 1 else sm.params.gpus_per_node,
    ),
    held_out=sm.params.held_out,
    nodes=sm.params.nodes,
)
