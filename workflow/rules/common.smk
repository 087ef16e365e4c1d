# Config and sample-sheet validation, the slide table, input functions and final targets.
import re
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

from cytofm.config import (
    CellsConfig,
    DatasetConfig,
    DemoConfig,
    TilingConfig,
    from_mapping,
)
from cytofm.sheet import load_sheet
from cytofm.synthetic.demo import make_demo_sheet

validate(config, "../schemas/config.schema.yaml")

RESULTS = config["results"]
DEMO_ENABLED = config["demo"]["enabled"]
DEMO = from_mapping(
    DemoConfig, {k: v for k, v in config["demo"].items() if k != "enabled"}, "demo"
)
# Build the typed sections once here so a bad value fails before any job runs.
TILING = from_mapping(TilingConfig, config["tiling"], "tiling")
CELLS = from_mapping(CellsConfig, config["cells"], "cells")


def _slide_table():
    frames = []
    if DEMO_ENABLED:
        frames.append(make_demo_sheet(DEMO, f"{RESULTS}/demo/slides"))
    if config["samples"]:
        sheet = load_sheet(config["samples"])
        validate(sheet, "../schemas/slides.schema.yaml")
        frames.append(sheet)
    if not frames:
        raise ValueError(
            "no slides: set 'samples' to your slides.tsv or 'demo.enabled: true' in config.yaml"
        )
    table = pd.concat(frames, ignore_index=True)
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


wildcard_constraints:
    slide="|".join(re.escape(s) for s in SLIDE_IDS) or "(?!)",
    dataset="|".join(re.escape(d) for d in DATASETS) or "(?!)",


def slide_path(wildcards):
    return SLIDES.loc[wildcards.slide, "path"]


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


def all_targets():
    targets = expand(f"{RESULTS}/tiles/{{slide}}.zarr", slide=SLIDE_IDS)
    targets += expand(f"{RESULTS}/qc/{{slide}}.png", slide=SLIDE_IDS)
    targets += expand(f"{RESULTS}/cells/{{slide}}.zarr", slide=SLIDE_IDS)
    targets += expand(f"{RESULTS}/datasets/{{dataset}}.zarr", dataset=list(DATASETS))
    if DEMO_ENABLED:
        targets.append(f"{RESULTS}/demo/slides.tsv")
        targets.append(f"{RESULTS}/qc/detection.json")
    return targets
