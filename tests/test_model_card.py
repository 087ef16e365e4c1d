"""The pretrained backbone's model card: hub metadata, data, recipe, results, and a usage
snippet that loads the weights as written."""

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cytofm.provenance import file_sha256
from cytofm.report.model_card import write_model_card
from cytofm.ssl.export import load_backbone
from cytofm.store import atomic_group
from tests.test_eval_backbones import export_tiny


@pytest.fixture
def card_inputs(tmp_path):
    stores = []
    for i, n in enumerate((7, 5)):
        path = tmp_path / "cells" / f"slide_{i}.zarr"
        with atomic_group(path) as g:
            g.create_array("images", shape=(n, 8, 8, 3), dtype="uint8")
            g.attrs.update({"mpp": 0.5, "stain": {"mode": "hematoxylin"}})
        stores.append(str(path))
    record = {
        "n_patches": 12,
        "sources": stores,
        "empty_sources": [],
        "steps": 40,
        "config": {"name": "toy", "epochs": 2, "batch_size": 8, "lr": 0.0005},
        "inductive": {"transductive": False, "excluded_rows": {"demo_cells": {"rows": 3}}},
        "git_commit": "abc123",
        "versions": {"torch": torch.__version__},
    }
    backbone = export_tiny(tmp_path / "backbone", 2, 0.5, 16.0, provenance=record)
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({
        "ssl_mean": 0.81, "ssl_std": 0.0, "random_mean": 0.52, "random_std": 0.03,
        "dataset": "demo_cells", "task": "demo_cells", "n_images": 90, "n_classes": 3,
        "chance": 1 / 3,
    }))  # fmt: skip
    summary = tmp_path / "summary.csv"
    pd.DataFrame([
        {"task": "cells", "backbone": b, "protocol": "linear", "shots": "all",
         "balanced_accuracy_mean": m, "balanced_accuracy_ci_low": m - 0.05,
         "balanced_accuracy_ci_high": m + 0.05}
        for b, m in (("cytofm", 0.9), ("random", 0.6), ("uni", 0.95))
    ] + [  # a data-fraction row and a few-shot row: not in the card
        {"task": "cells", "backbone": "cytofm", "protocol": "linear", "shots": "all",
         "fraction": 0.5, "balanced_accuracy_mean": 0.7},
        {"task": "cells", "backbone": "cytofm", "protocol": "fewshot", "shots": "2",
         "balanced_accuracy_mean": 0.5},
    ]).to_csv(summary, index=False)  # fmt: skip
    return backbone, probe, summary


def test_card_folder_is_the_backbone_with_a_hub_readme(card_inputs, tmp_path):
    backbone, probe, summary = card_inputs
    out = write_model_card(
        backbone, tmp_path / "hub", "toy", probe, [summary], ["cytofm", "random"], synthetic=True
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert (out / "model.safetensors").read_bytes() == (backbone / "model.safetensors").read_bytes()
    assert (
        os.stat(out / "model.safetensors").st_ino == os.stat(backbone / "model.safetensors").st_ino
    )
    text = (out / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["library_name"] == "timm" and header["pipeline_tag"] == "image-feature-extraction"
    assert "synthetic-data" in header["tags"] and "synthetic demo" in text
    # data by store name with counts, resolution, the inductive record
    assert "| slide_0 | slide (cells found by the pipeline) | 7 | 0.5 | hematoxylin |" in text
    assert "12 cell-centred patches from 2 patch store(s)" in text
    assert "16.0 um at 0.5 um/px" in text and "3 test row(s)" in text
    # recipe and steps, probe and task results of these weights and their control only
    assert "40 optimiser steps" in text and "batch_size: 8" in text
    assert "| these | 0.810 +- 0.000 |" in text and "| random, same architecture | 0.520" in text
    assert "| cells | cytofm | linear | 0.900 [0.850, 0.950] | n/a |" in text
    assert text.count("| cells | cytofm |") == 1  # not the fraction or few-shot rows
    assert f"SHA-256 `{file_sha256(backbone / 'model.safetensors')}`" in text
    assert "| cells | random | linear |" in text and "| uni |" not in text
    assert "Intended use and limits" in text and "Not a medical device" in text


def test_the_cards_usage_snippet_loads_the_same_model(card_inputs, tmp_path, monkeypatch):
    """The Python block of the README, run in the card folder as a user would, builds the
    model cytofm loads, with the same outputs."""
    backbone, probe, summary = card_inputs
    out = write_model_card(backbone, tmp_path / "hub", "toy", probe, [summary], ["cytofm"])
    code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    local_only = code.split("# or, once the folder is pushed")[0]  # no hub here
    assert "local-dir:." in local_only
    monkeypatch.chdir(out)
    scope: dict = {}
    exec(local_only, scope)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        got = scope["model"].eval()(x)
        want = load_backbone(backbone)(x)
    assert torch.allclose(got, want, atol=1e-6)
    assert list(scope["config"]["mean"]) == [0.7, 0.6, 0.7]
    assert tuple(scope["config"]["input_size"]) == (3, 32, 32)
