"""Adapter for rule `predict_table`: a slide task's predictions -> one CSV."""

from cytofm.log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from cytofm.stages.context import JobContext  # noqa: E402
from cytofm.stages.predict import run_predict_table  # noqa: E402

sm = snakemake  # noqa: F821
run_predict_table(
    list(sm.input),
    sm.output[0],
    job=JobContext.create(sm.config, sm.rule, dict(sm.wildcards), sm.input),
)
