# cytofm: cytology foundation-model pipeline. This file is a table of contents only:
# config and sheets are validated in workflow/rules/common.smk, each stage has its own file.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/tile.smk"
include: "workflow/rules/cells.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/export.smk"


# Summaries, tables and the model card run where snakemake runs, also under an executor such as
# SLURM: seconds of work each, which as cluster jobs would each wait in the queue.
localrules:
    all,
    demo_sheet,
    eval_summary,
    mil_summary,
    model_card,
    predict_table,


rule all:
    default_target: True
    input:
        PLAN.targets(),
