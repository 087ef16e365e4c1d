# Glue between the run plan and the rules. What the config and the sample sheet ask for (slide
# table, datasets, pretraining inputs, backbones, tasks, cohorts, resources, targets, paths) is
# worked out by cytofm/plan.py, a plain object tested without Snakemake; this file hands it on.
import os
import sys
from pathlib import Path

from snakemake.utils import validate

from cytofm.errors import InputDataError
from cytofm.eval.protocols import PROTOCOLS as EVAL_PROTOCOLS, settings_read
from cytofm.hardware import visible_gpus
from cytofm.plan import Plan
from cytofm.provenance import INVOCATION_ENV, new_invocation_id
from cytofm.sheet import is_remote
from cytofm.tracking import (
    PARENTS_DIR,
    PARENTS_ENV,
    SPOOL_ENV,
    end_invocation,
    flush_spool,
)

# The executor is not known while the Snakefile is read; `--jobs` (profiles/slurm sets it) is:
# jobs go to a cluster, whose nodes have the GPUs. Locally one runs with `--cores`.
LOCAL = workflow.resource_settings.nodes is None
# validates the config and the sheet (their JSON schemas, then every key's bounds and the
# relations between keys), fills defaults, refuses what cannot work
PLAN = Plan.build(config, local=LOCAL, validate=validate)
for _note in PLAN.notes:
    print(_note, file=sys.stderr)
CFG, PATHS, GPU = PLAN.config, PLAN.paths, PLAN.gpu

# One id for this invocation, inherited by every job (locally and through sbatch) and tagged
# on each job's MLflow run; set it yourself to group several invocations under one id.
os.environ.setdefault(INVOCATION_ENV, new_invocation_id())

# Jobs write their MLflow runs to this spool instead of importing mlflow (2-3 s a job) and the
# workflow sends them when it ends, or when the next run starts after a crash
# (cytofm/tracking/); pretraining logs live. `mlflow.defer: false` logs every job live.
# Every job's run nests under one parent run of this invocation, which the end closes.
MLFLOW_SPOOL = Path(PATHS.mlflow_spool()).resolve()
os.environ[PARENTS_ENV] = str(MLFLOW_SPOOL / PARENTS_DIR)
if CFG.mlflow.defer:
    os.environ[SPOOL_ENV] = str(MLFLOW_SPOOL)
else:
    os.environ.pop(SPOOL_ENV, None)


def send_spooled_runs(final, status="FINISHED"):
    if final:
        counts = end_invocation(MLFLOW_SPOOL, status)
    else:
        counts = flush_spool(MLFLOW_SPOOL)
    if counts["sent"] or counts["left"]:
        print(
            f"MLflow: sent {counts['sent']} spooled run(s) "
            f"({counts['killed']} of killed jobs), {counts['left']} left in {MLFLOW_SPOOL}",
            file=sys.stderr,
        )


onstart:
    send_spooled_runs(final=False)


onsuccess:
    send_spooled_runs(final=True)


onerror:
    send_spooled_runs(final=True, status="FAILED")


# GPU rules ask for one GPU with the 'gpu' resource: on SLURM the plugin requests a GPU for the
# job; locally the machine's GPUs are the limit (GPU jobs queue for them; `--resources gpu=N`
# wins). Set here, not in a profile: a workflow profile is also loaded under
# `--profile profiles/slurm`, where a limit would cap what each job asks the cluster for.
if LOCAL and GPU and "gpu" not in workflow.global_resources:
    workflow.register_resource("gpu", max(visible_gpus(), 1))


def threads_of(rule):
    return PLAN.threads(rule)


def mem_of(rule):
    return PLAN.mem_mb(rule)


def runtime_of(rule):
    return PLAN.runtime(rule)


def log_of(rule, *wildcards):
    return PATHS.log(rule, *wildcards)


def slide_path(wildcards):
    """The slide file as a job input: a URL becomes a storage input that Snakemake fetches for
    the job; a missing local file gives none (the job then fails alone, naming the file,
    instead of the whole workflow failing to build)."""
    path = PLAN.slide_file(wildcards.slide)
    if wildcards.slide in PLAN.missing_slides:
        return []
    fields = PLAN.specimen_fields(wildcards.slide)  # a specimen: its field images
    if fields is not None:
        return fields
    if not is_remote(path):
        return path
    try:
        return storage(path)
    except Exception as e:  # no plugin for the scheme, or a malformed URL
        raise InputDataError(
            f"{CFG.samples}: cannot read slide {path}: {e}. Install the Snakemake storage "
            "plugin for its scheme (e.g. pip install snakemake-storage-plugin-s3) or give a "
            "local path"
        ) from None


def ancient_features(files):
    """A job's inputs with the embedding manifests ('features') marked ancient: they order the
    job after its slides' embedding; what the features are made of is among its other inputs
    (PLAN.slide_features_input)."""
    return {k: ancient(v) if k == "features" else v for k, v in files.items()}


WC = PLAN.wildcard_constraints()


wildcard_constraints:
    slide=WC["slide"],
    dataset=WC["dataset"],
    model=WC["model"],
    backbone=WC["backbone"],
    task=WC["task"],
    stask=WC["stask"],
    protocol=WC["protocol"],
    kind=WC["kind"],
    source=WC["source"],
    shard=WC["shard"],
