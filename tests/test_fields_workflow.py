"""Specimens made of fields through the workflow: a sheet whose rows name folders (and a glob)
of synthetic field images, one with an unreadable field, through tiling, cells, embedding and
attention MIL; adding a field to a specimen reruns that specimen only."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import yaml

from tests.test_fields import synthetic_fields
from tests.test_reliability_workflow import snakemake

pytestmark = pytest.mark.workflow
TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 8, "img_size": 32}


def _config(root, sheet):
    cfg = {
        "results": str(root / "results"),
        "samples": str(sheet),
        "demo": {"enabled": False},
        "pretrain": {"enabled": False},
        "tiling": {"tile_px": 256},
        "backbones": {
            "rnd": {"kind": "random", "arch": "vit_small_patch16_224", "model_args": TINY_VIT,
                    "input_size": 32},
        },
        "embed": {"sources": ["cells"], "batch_size": 64},
        "evaluate": {
            "slide_tasks": {
                "dx": {"label": "dx", "slides": "all", "folds": 2, "seeds": [0],
                       "classes": ["0", "1"]},
            },
            "bootstrap": 50,
            "mil": {"max_epochs": 3, "min_epochs": 1, "hidden": 16, "attn_dim": 8, "top_k": 4},
        },
        "report": {"enabled": False},
        "mlflow": {"tracking_uri": "none"},
    }  # fmt: skip
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def specimens(tmp_path_factory):
    root = tmp_path_factory.mktemp("specimens")
    rows = ["slide_id\tpath\tmpp\tdx"]
    for i in range(8):
        folder = root / "fields" / f"spec{i}"
        synthetic_fields(folder, 3, seed=10 + i, abnormal=bool(i % 2), size=(480, 360))
        path = f"{folder}/field_*.jpg" if i == 3 else str(folder)  # a glob, and folders
        rows.append(f"spec{i}\t{path}\t0.25\t{i % 2}")
    (root / "fields" / "spec2" / "field_09.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    sheet = root / "specimens.tsv"
    sheet.write_text("\n".join(rows) + "\n")
    cfg = _config(root, sheet)
    return {"root": root, "cfg": cfg, "run": snakemake([cfg], timeout=1200)}


def test_specimens_run_through_cells_embedding_and_mil(specimens):
    proc, results = specimens["run"], specimens["root"] / "results"
    assert proc.returncode == 0, proc.stderr[-4000:]
    from cytofm.store import open_store

    for i in range(8):
        cells = open_store(results / "cells" / f"spec{i}.zarr")
        n = cells["images"].shape[0]
        assert len(cells.attrs["fields"]) == 3 and len(cells["field"][:]) == n
        feats = open_store(results / "features" / "rnd" / "cells" / f"spec{i}.zarr")
        assert feats["features"].shape == (n, 32)
    qc = json.loads((results / "qc" / "spec2.cells.json").read_text())
    assert qc["bad_fields"] == [{"name": "field_09.jpg", "reason": "cannot be decoded"}]
    log = (results / "logs" / "cells" / "spec2.log").read_text()
    assert "field_09.jpg left out: cannot be decoded" in log
    res = json.loads((results / "eval" / "dx" / "rnd" / "abmil.json").read_text())
    assert sorted(res["slides"]) == [f"spec{i}" for i in range(8)]
    auroc = res["results"][0]["summary"]["auroc"]["mean"]
    assert np.isfinite(auroc)
    assert (results / "qc" / "spec3.png").is_file()  # one QC mosaic per specimen


def test_adding_a_field_reruns_that_specimen_only(specimens):
    folder = specimens["root"] / "fields" / "spec5"
    shutil.copy(folder / "field_00.jpg", folder / "field_03.jpg")
    proc = snakemake([specimens["cfg"]], "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.M))
    # two backbones: rnd, and the morphometry control config.yaml ships
    assert {k: int(v) for k, v in jobs.items() if k != "total"} == {
        "tile": 1, "cells": 1, "embed_slides": 2, "mil": 2, "mil_summary": 1, "all": 1,
    }  # fmt: skip
    assert set(re.findall(r"slide=(\w+)", proc.stdout)) == {"spec5"}
    assert set(re.findall(r"shard=(\w+)", proc.stdout)) == {"00000"}  # the specimens' one
