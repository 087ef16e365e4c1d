# Config and sample-sheet validation, the slide table, input functions and final targets.
import os
import re
import sys
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

from cytofm.config import (
    CellsConfig,
    DatasetConfig,
    DemoConfig,
    EmbedConfig,
    EvalConfig,
    PretrainConfig,
    ReportConfig,
    SlideTaskConfig,
    TaskConfig,
    TilingConfig,
    from_mapping,
)
from cytofm.errors import InputDataError
from cytofm.hardware import gpu_request, visible_gpus
from cytofm.eval.backbones import KINDS as BACKBONE_BUILTIN_KINDS, BackboneSpec
from cytofm.eval.protocols import PROTOCOLS as EVAL_PROTOCOLS
from cytofm.inductive import exposure, leak_message, slide_leaks
from cytofm.labels import check_labels
from cytofm.provenance import INVOCATION_ENV, new_invocation_id
from cytofm.tracking import SPOOL_ENV, flush_spool
from cytofm.cells.stain import stain_mode
from cytofm.sheet import is_remote, load_sheet
from cytofm.synthetic.demo import make_demo_sheet

validate(config, "../schemas/config.schema.yaml")

# One id for this invocation, inherited by every job (locally and through sbatch) and tagged
# on each job's MLflow run; set it yourself to group several invocations under one id.
os.environ.setdefault(INVOCATION_ENV, new_invocation_id())

RESULTS = config["results"]

# Jobs write their MLflow runs to this spool instead of importing mlflow (2-3 s a job) and the
# workflow sends them when it ends, or when the next run starts after a crash
# (cytofm/tracking.py); pretraining logs live. `mlflow.defer: false` logs every job live.
MLFLOW_SPOOL = Path(RESULTS).resolve() / "mlflow-spool"
if config["mlflow"]["defer"]:
    os.environ[SPOOL_ENV] = str(MLFLOW_SPOOL)
else:
    os.environ.pop(SPOOL_ENV, None)


def send_spooled_runs(final):
    counts = flush_spool(MLFLOW_SPOOL, final=final)
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
    send_spooled_runs(final=True)


DEMO_ENABLED = config["demo"]["enabled"]
DEMO = from_mapping(
    DemoConfig, {k: v for k, v in config["demo"].items() if k != "enabled"}, "demo"
)
# Build the typed sections once here so a bad value fails before any job runs.
TILING = from_mapping(TilingConfig, config["tiling"], "tiling")
CELLS = from_mapping(CellsConfig, config["cells"], "cells")
PRETRAIN_ENABLED = config["pretrain"]["enabled"]
PRETRAIN = from_mapping(
    PretrainConfig,
    {k: v for k, v in config["pretrain"].items() if k not in ("enabled", "nproc")},
    "pretrain",
)


# Job resources per rule: (threads, mem_mb, runtime in minutes); config `resources` overrides.
_RESOURCE_DEFAULTS = {
    "demo_slide": (1, 3000, 30),
    "demo_crops": (1, 1000, 30),
    "tile": (1, 2000, 120),
    "cells": (1, 2000, 240),
    "import_dataset": (1, 2000, 60),
    "pretrain": (8, 8000, 720),
    "pretrain_probe": (2, 4000, 60),
    "backbone": (1, 8000, 60),
    "embed": (2, 4000, 120),
    "evaluate": (2, 4000, 240),
    "mil": (1, 4000, 120),
}
_RESOURCES = config.get("resources") or {}
_unknown = sorted(set(_RESOURCES) - set(_RESOURCE_DEFAULTS) - {"gpu"})
if _unknown:
    raise ValueError(
        f"resources: unknown rule(s) {_unknown}; rules with resources: {sorted(_RESOURCE_DEFAULTS)}"
    )
# GPU rules (pretrain, embed, LoRA evaluation) ask for one GPU with the 'gpu' resource: locally
# the profile lets one run at a time; on SLURM the plugin requests a GPU for the job. `auto`:
# a GPU on a cluster or where this machine has one, none on a CPU-only machine run locally.
# The executor is not known while the Snakefile is read; `--jobs` (profiles/slurm sets it) is:
# jobs go to a cluster, whose nodes have the GPUs. Locally one runs with `--cores`.
_LOCAL = workflow.resource_settings.nodes is None
GPU = gpu_request(_RESOURCES.get("gpu", "auto"), local=_LOCAL)
# The local GPU limit is set here, not in a profile: a workflow profile is also loaded under
# `--profile profiles/slurm`, where a limit would cap what each job asks the cluster for.
# Locally the machine's GPUs are the limit (GPU jobs queue for them); `--resources gpu=N` wins.
if _LOCAL and GPU and "gpu" not in workflow.global_resources:
    workflow.register_resource("gpu", max(visible_gpus(), 1))
# Jobs that feed a GPU get threads for data loading; on CPU, one thread per job lets small
# jobs (dominated by start-up) run side by side instead of one at a time.
for _name in ("embed", "evaluate"):
    _RESOURCE_DEFAULTS[_name] = (4 if GPU else 1, *_RESOURCE_DEFAULTS[_name][1:])


def _resource(rule, index, key):
    value = (_RESOURCES.get(rule) or {}).get(key)
    return int(value) if value is not None else _RESOURCE_DEFAULTS[rule][index]


def gpus_of(rule):
    """GPUs a GPU rule's job asks for: `resources.<rule>.gpus`, else 1 (0 with gpu: false)."""
    gpus = (_RESOURCES.get(rule) or {}).get("gpus")
    return GPU if gpus is None or not GPU else int(gpus)


_multi = sorted(
    r
    for r, v in _RESOURCES.items()
    if r != "pretrain" and isinstance(v, dict) and "gpus" in v
)
if _multi:
    raise ValueError(
        f"resources: 'gpus' is read for pretrain only (one job, several GPUs under torchrun); "
        f"remove it from {_multi}"
    )


def threads_of(rule):
    return _resource(rule, 0, "threads")


def mem_of(rule):
    return _resource(rule, 1, "mem_mb")


def runtime_of(rule):
    return _resource(rule, 2, "runtime")


def _slide_table():
    frames = []
    if DEMO_ENABLED:
        frames.append(make_demo_sheet(DEMO, f"{RESULTS}/demo/slides"))
    if config["samples"]:
        sheet = load_sheet(config["samples"])
        validate(sheet, "../schemas/slides.schema.yaml")
        frames.append(sheet)
    if not frames:  # no slides: a run on imported collections only
        return pd.DataFrame(columns=["slide_id", "path", "mpp", "split"]).set_index(
            "slide_id", drop=False
        )
    # object columns: a column one sheet lacks must not turn the other's integers into floats
    table = pd.concat([f.astype(object) for f in frames], ignore_index=True)
    dups = table["slide_id"][table["slide_id"].duplicated()].tolist()
    if dups:
        raise ValueError(
            f"slide_id(s) {dups} appear in both the demo and {config['samples']}"
        )
    table["mpp"] = pd.to_numeric(
        table["mpp"].replace("", float("nan")), errors="coerce"
    )
    return table.set_index("slide_id", drop=False)


SLIDES = _slide_table()
SLIDE_IDS = list(SLIDES.index)
DEMO_IDS = [s for s in SLIDE_IDS if DEMO_ENABLED and s.startswith("demo_")]


def _datasets():
    sets = {}
    if DEMO_ENABLED and DEMO.crops_per_class > 0:
        sets["demo_cells"] = {
            "path": f"{RESULTS}/demo/crops/labels.csv",
            "format": "csv",
            "mpp": DEMO.mpp,
            "patch_um": CELLS.patch_um,
            "patch_px": CELLS.patch_px,
        }
    for name, entry in (config.get("datasets") or {}).items():
        sets[name] = dict(entry)
    for name, entry in sets.items():
        from_mapping(DatasetConfig, {"name": name, **entry}, f"datasets.{name}")
    return sets


DATASETS = _datasets()
if not SLIDE_IDS and not DATASETS:
    raise ValueError(
        "nothing to do: set 'samples' to your slides.tsv, 'demo.enabled: true', or add 'datasets'"
    )


def _pretrain_slides():
    """Slides whose cells/tiles pretraining reads: those of the chosen splits."""
    if not {"cells", "tiles"} & set(PRETRAIN.sources):
        return []
    if "split" in SLIDES.columns and PRETRAIN.splits and SLIDE_IDS:
        return [s for s in SLIDE_IDS if SLIDES.loc[s, "split"] in PRETRAIN.splits]
    return SLIDE_IDS


PRETRAIN_SLIDES = _pretrain_slides() if PRETRAIN_ENABLED else []


def _pretrain_stores():
    """Patch stores pretraining reads: per-slide cells/tiles of the chosen splits, datasets."""
    ids = PRETRAIN_SLIDES
    stores = []
    for source in PRETRAIN.sources:
        if source in ("cells", "tiles"):
            stores += [f"{RESULTS}/{source}/{s}.zarr" for s in ids]
        elif source in DATASETS:
            stores.append(f"{RESULTS}/datasets/{source}.zarr")
        else:
            raise ValueError(
                f"pretrain.sources entry {source!r} is not 'cells', 'tiles' or a dataset "
                f"name ({sorted(DATASETS)})"
            )
    if not stores:
        raise ValueError(
            f"pretraining has no input: no slide has a split in pretrain.splits {list(PRETRAIN.splits)}"
        )
    return stores


PRETRAIN_STORES = _pretrain_stores() if PRETRAIN_ENABLED else []
KNN_STORE = (
    [f"{RESULTS}/datasets/{PRETRAIN.knn_dataset}.zarr"]
    if PRETRAIN_ENABLED and PRETRAIN.knn_dataset in DATASETS
    else []
)


EMBED = from_mapping(EmbedConfig, config["embed"], "embed")
EVAL = from_mapping(
    EvalConfig,
    {k: v for k, v in config["evaluate"].items() if k not in ("tasks", "slide_tasks")},
    "evaluate",
)


def _backbones():
    specs = {}
    for name, entry in (config.get("backbones") or {}).items():
        specs[name] = from_mapping(
            BackboneSpec, {"name": name, **entry}, f"backbones.{name}"
        )
    for name, spec in specs.items():
        if (
            spec.kind == "random"
            and spec.like
            and (spec.like not in specs or specs[spec.like].kind != "pretrained")
        ):
            raise ValueError(
                f"backbones.{name}.like must name a backbone of kind 'pretrained', got {spec.like!r}"
            )
    if not PRETRAIN_ENABLED:
        # backbones that need this config's pretraining are left out, and said so
        needs = [
            n
            for n, s in specs.items()
            if s.kind == "pretrained" or (s.kind == "random" and s.like)
        ]
        if needs:
            print(
                f"pretrain.enabled is false: not evaluating backbones {needs} (they need the "
                "pretrained model; load exported weights with kind 'timm' instead)",
                file=sys.stderr,
            )
        specs = {n: s for n, s in specs.items() if n not in needs}
    return specs


BACKBONES = _backbones()


def _tasks():
    tasks = {}
    for name, entry in (config["evaluate"].get("tasks") or {}).items():
        task = from_mapping(
            TaskConfig, {"name": name, **entry}, f"evaluate.tasks.{name}"
        )
        if task.dataset == "demo_cells" and not DEMO_ENABLED:
            continue  # the demo's own task, inherited from config.yaml by other configs
        if task.dataset not in DATASETS:
            raise ValueError(
                f"evaluate.tasks.{name}.dataset {task.dataset!r} is not an imported dataset "
                f"({sorted(DATASETS)}); add it under 'datasets'"
            )
        tasks[name] = task
    return tasks


TASKS = _tasks() if BACKBONES else {}


def _slide_tasks():
    """Slide-level (attention MIL) tasks; a demo-only task is left out when the demo is off."""
    tasks = {}
    for name, entry in (config["evaluate"].get("slide_tasks") or {}).items():
        s = f"evaluate.slide_tasks.{name}"
        task = from_mapping(SlideTaskConfig, {"name": name, **entry}, s)
        if name in TASKS:
            raise ValueError(
                f"{s}: the name is also a patch-level task; rename one of them"
            )
        if task.slides == "demo" and not DEMO_ENABLED:
            continue
        if task.instances not in EMBED.sources:
            raise ValueError(
                f"{s}.instances is {task.instances!r}, but embed.sources {list(EMBED.sources)} "
                f"does not embed them; add {task.instances!r} to embed.sources"
            )
        if task.label not in SLIDES.columns:
            raise ValueError(
                f"{s}.label {task.label!r} is not a column of the sample sheet "
                f"({config['samples'] or 'the demo sheet'}); its columns are "
                f"{[c for c in SLIDES.columns]}"
            )
        tasks[name] = task
        cohort = mil_cohort(name, tasks)
        check_labels(
            [row["label"] for row in cohort],
            [row["slide_id"] for row in cohort],
            source=f"column {task.label!r} of {config['samples'] or 'the demo sheet'}",
            key=s,
            declared=task.classes,
        )
        labels = {row["label"] for row in cohort}
        if len(labels) < 2:
            raise ValueError(
                f"{s}: the labelled slides hold {len(labels)} class(es) {sorted(labels)} in "
                f"column {task.label!r}; attention MIL needs at least two"
            )
    return tasks


def _sheet_value(slide, column):
    """A sheet cell as a string, '' when the column is missing or the cell is empty."""
    if column not in SLIDES.columns:
        return ""
    value = SLIDES.loc[slide, column]
    if pd.isna(value):
        return ""
    return str(value).strip()


def mil_cohort(name, tasks=None):
    """The slides of a slide task (those with a label) with what the MIL job needs of each."""
    task = (tasks or SLIDE_TASKS)[name]
    ids = DEMO_IDS if task.slides == "demo" else SLIDE_IDS
    rows = []
    for s in ids:
        label = _sheet_value(s, task.label)
        if not label:
            continue  # unlabelled slides are not part of the task
        mpp = SLIDES.loc[s, "mpp"]
        rows.append(
            {
                "slide_id": s,
                "label": label,
                "group": _sheet_value(s, task.group),
                "path": str(SLIDES.loc[s, "path"]),
                "mpp": None if pd.isna(mpp) else float(mpp),
                "truth": _sheet_value(s, "cell_truth"),
            }
        )
    return rows


def mil_inputs(wildcards):
    """Per cohort slide: its feature store and patch store (same order as the cohort), the
    slide file (for the heatmap thumbnail) and any cell truth table."""
    task = SLIDE_TASKS[wildcards.stask]
    cohort = mil_cohort(wildcards.stask)
    kind = task.instances
    return {
        "features": [
            f"{RESULTS}/features/{wildcards.backbone}/{kind}/{r['slide_id']}.zarr"
            for r in cohort
        ],
        "instances": [f"{RESULTS}/{kind}/{r['slide_id']}.zarr" for r in cohort],
        "slides": [r["path"] for r in cohort if r["slide_id"] not in MISSING_SLIDES],
        "truth": [r["truth"] for r in cohort if r["truth"]],
    }


SLIDE_TASKS = _slide_tasks() if BACKBONES else {}


def _check_inductive():
    """Refuse, before any job, a config whose pretraining reads slides a slide task
    cross-validates (unless pretrain.transductive); dataset test rows are left out of
    pretraining by the pretraining job itself (pretrain_held_out)."""
    if not PRETRAIN_ENABLED or PRETRAIN.transductive or not PRETRAIN_SLIDES:
        return
    cohorts = {t: [r["slide_id"] for r in mil_cohort(t)] for t in SLIDE_TASKS}
    leaks = slide_leaks(PRETRAIN_SLIDES, cohorts)
    if leaks:
        kinds = [k for k in ("cells", "tiles") if k in PRETRAIN.sources]
        stores = {
            s: f"{RESULTS}/{kinds[0]}/{s}.zarr"
            for slides in leaks.values()
            for s in slides
        }
        raise InputDataError(leak_message(leaks, stores, PRETRAIN.sources))


_check_inductive()


def mil_exposure(wildcards):
    """What the backbone's pretraining saw of a slide task's cohort, for its result JSON."""
    spec = BACKBONES[wildcards.backbone]
    if spec.kind != "pretrained":
        return exposure(None, spec.kind, None)
    cohort = [r["slide_id"] for r in mil_cohort(wildcards.stask)]
    seen = slide_leaks(PRETRAIN_SLIDES, {"t": cohort}).get("t", [])
    return {
        "pretraining": "this config's pretraining",
        "transductive": PRETRAIN.transductive,
        "cohort_slides_pretrained_on": len(seen),
    }


def pretrain_held_out():
    """Dataset store -> the tasks evaluated on it, whose test rows pretraining leaves out."""
    if PRETRAIN.transductive:
        return {}
    out = {}
    for source in PRETRAIN.sources:
        if source in DATASETS:
            tasks = [t.to_dict() for t in TASKS.values() if t.dataset == source]
            if tasks:
                out[f"{RESULTS}/datasets/{source}.zarr"] = tasks
    return out


def _embed_sources():
    """(kind, name) of every store that gets features."""
    out = []
    for kind in EMBED.sources:
        if kind == "datasets":
            out += [("datasets", d) for d in DATASETS]
        else:
            out += [(kind, s) for s in SLIDE_IDS]
    return out


def pretrained_dir(name):
    """Exported backbone folder a backbone spec reads (pretrained, or random 'like' one)."""
    spec = BACKBONES[name]
    if spec.kind == "pretrained" or (spec.kind == "random" and spec.like):
        return f"{RESULTS}/pretrain/{PRETRAIN.name}/backbone"
    return None


def backbone_inputs(wildcards):
    """Files a backbone is built from, so new weights re-embed and re-evaluate."""
    spec = BACKBONES[wildcards.backbone]
    files = {}
    if pretrained_dir(wildcards.backbone):
        files["pretrained"] = pretrained_dir(wildcards.backbone)
    if spec.kind == "timm" or (
        spec.kind not in BACKBONE_BUILTIN_KINDS and spec.weights
    ):
        files["weights"] = spec.weights
    return files


def evaluate_inputs(wildcards):
    task = TASKS[wildcards.task]
    files = {"dataset": f"{RESULTS}/datasets/{task.dataset}.zarr"}
    # the backbone's files: LoRA trains from them; every protocol reads what pretraining saw
    files.update(backbone_inputs(wildcards))
    if EVAL_PROTOCOLS[wildcards.protocol].needs_features:
        files["features"] = (
            f"{RESULTS}/features/{wildcards.backbone}/datasets/{task.dataset}.zarr"
        )
    return files


wildcard_constraints:
    slide="|".join(re.escape(s) for s in SLIDE_IDS) or "(?!)",
    dataset="|".join(re.escape(d) for d in DATASETS) or "(?!)",
    model=re.escape(PRETRAIN.name),
    backbone="|".join(re.escape(b) for b in BACKBONES) or "(?!)",
    task="|".join(re.escape(t) for t in TASKS) or "(?!)",
    stask="|".join(re.escape(t) for t in SLIDE_TASKS) or "(?!)",
    protocol="|".join(
        re.escape(p) for p in sorted({p for t in TASKS.values() for p in t.protocols})
    )
    or "(?!)",
    kind="datasets|cells|tiles",
    source="|".join(re.escape(s) for s in [*SLIDE_IDS, *DATASETS]) or "(?!)",


if (
    "stain" in SLIDES.columns
):  # a stain name the detector does not know fails before any job
    _bad = {}
    for _sid, _value in SLIDES["stain"].items():
        try:
            stain_mode(None if pd.isna(_value) else str(_value), CELLS.stain)
        except ValueError as e:
            _bad[_sid] = str(e)
    if _bad:
        raise InputDataError(
            f"{config['samples']}: column 'stain' of slide(s) {sorted(_bad)[:10]}: "
            + next(iter(_bad.values()))
        )

# Slides of the sheet whose file is missing: their tile job fails with the path and the fix,
# and with --keep-going (the default profile's setting) every other slide is still processed.
MISSING_SLIDES = [
    s
    for s in SLIDE_IDS
    if s not in DEMO_IDS
    and not is_remote(SLIDES.loc[s, "path"])
    and not os.path.isfile(SLIDES.loc[s, "path"])
]
if MISSING_SLIDES:
    print(
        f"{len(MISSING_SLIDES)} slide file(s) of {config['samples']} not found: "
        + ", ".join(f"{s} ({SLIDES.loc[s, 'path']})" for s in MISSING_SLIDES[:10])
        + (" ..." if len(MISSING_SLIDES) > 10 else "")
        + "; their jobs will fail, the other slides run. Fix the 'path' column or remove "
        "the rows.",
        file=sys.stderr,
    )


def slide_file(wildcards):
    return SLIDES.loc[wildcards.slide, "path"]


def _remote(path):
    """A URL in the sheet: the storage plugin for its scheme fetches it for the job."""
    try:
        return storage(path)
    except Exception as e:  # no plugin for the scheme, or a malformed URL
        raise InputDataError(
            f"{config['samples']}: cannot read slide {path}: {e}. Install the Snakemake "
            "storage plugin for its scheme (e.g. pip install snakemake-storage-plugin-s3) "
            "or give a local path"
        ) from None


def slide_path(wildcards):
    """The slide file as a job input (a URL becomes a storage input that Snakemake fetches
    for the job), or none when a local file is missing (the job then fails alone, naming the
    file, instead of the whole workflow failing to build)."""
    path = SLIDES.loc[wildcards.slide, "path"]
    if wildcards.slide in MISSING_SLIDES:
        return []
    return _remote(path) if is_remote(path) else path


def slide_stain(wildcards):
    """The sheet's stain of the slide ("" = cells.stain); checked when the sheet is read."""
    if "stain" not in SLIDES.columns:
        return ""
    value = SLIDES.loc[wildcards.slide, "stain"]
    return "" if pd.isna(value) else str(value)


def slide_mpp(wildcards):
    """The sheet's mpp override, or None to read it from the file."""
    value = SLIDES.loc[wildcards.slide, "mpp"]
    return None if pd.isna(value) else float(value)


def dataset_source(wildcards):
    """A CSV or a folder the import reads; demo crops are made by a rule first."""
    entry = DATASETS[wildcards.dataset]
    if wildcards.dataset == "demo_cells" and DEMO_ENABLED:
        return entry["path"]
    return []


REPORT_ENABLED = config["report"]["enabled"]
REPORT = from_mapping(
    ReportConfig,
    {k: v for k, v in config["report"].items() if k != "enabled"},
    "report",
)


def report_embeddings():
    """task -> backbone -> the dataset's feature store and the dataset store."""
    if "datasets" not in EMBED.sources:
        return {}
    return {
        task.name: {
            b: {
                "features": f"{RESULTS}/features/{b}/datasets/{task.dataset}.zarr",
                "dataset": f"{RESULTS}/datasets/{task.dataset}.zarr",
            }
            for b in BACKBONES
        }
        for task in TASKS.values()
    }


def report_slide_features():
    """backbone -> slide -> cell feature store (when cells are embedded)."""
    if "cells" not in EMBED.sources:
        return {}
    return {
        b: {s: f"{RESULTS}/features/{b}/cells/{s}.zarr" for s in SLIDE_IDS}
        for b in BACKBONES
    }


def report_slide_meta():
    """slide -> the sheet's stain (the only metadata the report shows)."""
    if "stain" not in SLIDES:
        return {}
    return {s: {"stain": _sheet_value(s, "stain")} for s in SLIDE_IDS}


def report_inputs(wildcards):
    results = [
        f"{RESULTS}/eval/{task.name}/{b}/{protocol}.json"
        for b in BACKBONES
        for task in TASKS.values()
        for protocol in task.protocols
    ]
    results += [
        f"{RESULTS}/eval/{t}/{b}/abmil.json" for b in BACKBONES for t in SLIDE_TASKS
    ]
    files = {
        "results": results,
        "abmil": [
            f"{RESULTS}/eval/{t}/{b}/abmil" for b in BACKBONES for t in SLIDE_TASKS
        ],
        "qc": expand(f"{RESULTS}/qc/{{slide}}.png", slide=SLIDE_IDS),
        "detection": expand(f"{RESULTS}/qc/{{slide}}.cells.json", slide=SLIDE_IDS),
        "comparisons": [
            f"{RESULTS}/eval/{t}/comparisons.csv" for t in [*TASKS, *SLIDE_TASKS]
        ],
        "features": [
            e["features"] for t in report_embeddings().values() for e in t.values()
        ]
        + [p for d in report_slide_features().values() for p in d.values()],
    }
    if PRETRAIN_ENABLED:
        files["pretrained"] = [f"{RESULTS}/pretrain/{PRETRAIN.name}/backbone"]
    return files


def all_targets():
    targets = expand(f"{RESULTS}/tiles/{{slide}}.zarr", slide=SLIDE_IDS)
    targets += expand(f"{RESULTS}/qc/{{slide}}.png", slide=SLIDE_IDS)
    targets += expand(f"{RESULTS}/cells/{{slide}}.zarr", slide=SLIDE_IDS)
    targets += expand(f"{RESULTS}/datasets/{{dataset}}.zarr", dataset=list(DATASETS))
    if PRETRAIN_ENABLED:
        targets.append(f"{RESULTS}/pretrain/{PRETRAIN.name}/backbone")
        if KNN_STORE:
            targets.append(f"{RESULTS}/pretrain/{PRETRAIN.name}/probe.json")
    for backbone in BACKBONES:
        targets += [
            f"{RESULTS}/features/{backbone}/{kind}/{name}.zarr"
            for kind, name in _embed_sources()
        ]
        for task in TASKS.values():
            targets += [
                f"{RESULTS}/eval/{task.name}/{backbone}/{protocol}.json"
                for protocol in task.protocols
            ]
        targets += [
            f"{RESULTS}/eval/{task}/{backbone}/abmil.json" for task in SLIDE_TASKS
        ]
    targets += [f"{RESULTS}/eval/{task}/summary.csv" for task in [*TASKS, *SLIDE_TASKS]]
    if REPORT_ENABLED:
        targets.append(f"{RESULTS}/report/index.html")
    if DEMO_ENABLED:
        targets.append(f"{RESULTS}/demo/slides.tsv")
        targets.append(f"{RESULTS}/qc/detection.json")
    return targets
