"""Adapter for rule `report`: the results report over every result of the run."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from pathlib import Path  # noqa: E402

from cytofm.config import ReportConfig, from_mapping  # noqa: E402
from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.report import run_report  # noqa: E402

sm = snakemake  # noqa: F821
run_report(
    list(sm.input.results),
    Path(sm.output.index).parent,
    embeddings=sm.params.embeddings,
    slide_features=sm.params.slide_features,
    slide_meta=sm.params.slide_meta,
    pretrain_dirs=list(sm.input.get("pretrained", [])),
    qc=[tuple(q) for q in sm.params.qc],
    comparisons=list(sm.input.comparisons),
    detection=list(sm.input.detection),
    truth=list(sm.input.get("truth", [])),
    predictions=list(sm.input.get("predictions", [])),
    extras={
        "trees": sm.params.trees,
        "calibration": sm.params.calibration,
        "robustness": sm.params.robustness,
        "checkpoints": sm.params.checkpoints,
        "n_boot": sm.params.bootstrap,
    },
    cfg=from_mapping(ReportConfig, sm.params.report, "report"),
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
