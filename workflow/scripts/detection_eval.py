"""Adapter for rule `detection_eval`: detections vs. the sheet's cell_truth tables."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.detection_eval import run_detection_eval  # noqa: E402

sm = snakemake  # noqa: F821
run_detection_eval(
    cell_stores=list(sm.input.cells),
    truth_tables=list(sm.input.truth),
    tolerance_um=sm.params.tolerance_um,
    out_json=sm.output.json,
    slides=sm.params.slides,
    out_overlays=sm.output.overlays,
    job=JobContext.create(sm.config, sm.rule, inputs=sm.input),
)
