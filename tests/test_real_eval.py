"""The evaluation harness on real cells: PBC (8 classes) and CRIC (6 noisy classes).

Runs ``configs/real_data.yaml`` through Snakemake with the CI overlay ``.test/real_data_ci.yaml``
(200 pretraining steps; LoRA at 1, 4 and 16 shots): import, pretraining, embedding with the
pretrained backbone and the random control, every protocol, the summaries. About 10 minutes on
2 CPU cores. The assertions are about the harness (every result exists, is consistent and
reports what it skipped) and about one effect large enough to be stable: pretrained features
beat random ones on PBC (measured +0.15 balanced accuracy for the 200-step recipe in
tests/test_ssl_learns.py; asserted: +0.05).
"""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, shared

pytestmark = [pytest.mark.slow_ok, pytest.mark.workflow]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    shared("pbc_blood_subset", "images")
    shared("cric_cervix_cells", "quality.csv")
    out = tmp_path_factory.mktemp("real") / "results"
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [
        str(exe),
        "--cores",
        "2",
        "--configfile",
        "configs/real_data.yaml",
        ".test/real_data_ci.yaml",
        "--config",
        f"results={out}",
    ]
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3000,
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": "none"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _load(results, task, backbone, protocol):
    return json.loads((results / "eval" / task / backbone / f"{protocol}.json").read_text())


def test_every_result_and_summary_exists(results):
    for task, protocols in {
        "pbc": ["linear", "knn", "fewshot", "lora"],
        "cric": ["linear", "knn", "fewshot"],
    }.items():
        for backbone in ("cytofm", "random"):
            for protocol in protocols:
                res = _load(results, task, backbone, protocol)
                assert res["results"], (task, backbone, protocol)
        assert (results / "eval" / task / "summary.csv").is_file()
        assert (results / "eval" / task / "fewshot.png").stat().st_size > 10_000


def test_pbc_split_and_protocol_grid(results):
    res = _load(results, "pbc", "cytofm", "fewshot")
    assert res["split"]["source"] == "stratified"  # PBC has no patient ids
    assert res["split"]["n_test"] == 240  # 20% of 8 x 150
    assert [b["shots"] for b in res["results"]] == [1, 2, 4, 8, 16, 50]
    assert all(len(b["runs"]) == 3 for b in res["results"])
    lora = _load(results, "pbc", "cytofm", "lora")
    assert [b["shots"] for b in lora["results"]] == [1, 4, 16]
    # the sampled training rows are the same for the linear head and LoRA (same seeds)
    assert lora["results"][1]["runs"][0]["train_rows"] == res["results"][2]["runs"][0]["train_rows"]


def test_cric_reports_the_short_class(results):
    res = _load(results, "cric", "cytofm", "fewshot")
    skipped = {s["shots"]: s["reason"] for s in res["skipped"]}
    assert 50 in skipped and "SCC" in skipped[50]


def test_pretrained_beats_random_on_pbc(results):
    ssl = _load(results, "pbc", "cytofm", "linear")["results"][0]["summary"]
    rnd = _load(results, "pbc", "random", "linear")["results"][0]["summary"]
    assert ssl["balanced_accuracy"]["mean"] - rnd["balanced_accuracy"]["mean"] >= 0.05


def test_summary_table_equals_the_jsons(results):
    table = pd.read_csv(results / "eval" / "pbc" / "summary.csv")
    for protocol in ("linear", "fewshot", "lora"):
        res = _load(results, "pbc", "random", protocol)
        for block in res["results"]:
            shots = "all" if block["shots"] is None else str(block["shots"])
            row = table[
                (table.backbone == "random")
                & (table.protocol == protocol)
                & (table.shots.astype(str) == shots)
            ]
            assert len(row) == 1
            assert row["balanced_accuracy_mean"].iloc[0] == pytest.approx(
                block["summary"]["balanced_accuracy"]["mean"], abs=1e-4
            )


def test_cric_bethesda_tree_and_calibration_on_real_cells(results):
    """CRIC's Bethesda tree (negative / low-grade / high-grade): every backbone's linear probe
    scored per level with screening operating points, and calibrated on its validation rows."""
    tree = pd.read_csv(results / "eval" / "cric" / "hierarchy.csv")
    for backbone in ("cytofm", "random"):
        rows = tree[(tree.backbone == backbone) & (tree.protocol == "linear")].set_index("metric")
        fine = _load(results, "cric", backbone, "linear")["results"][0]["summary"]
        # the last level is the task itself
        assert rows.loc["level3_balanced_accuracy", "mean"] == pytest.approx(
            fine["balanced_accuracy"]["mean"], abs=1e-4
        )
        # negative vs abnormal is the easier question
        assert (
            rows.loc["level1_balanced_accuracy", "mean"]
            > rows.loc["level3_balanced_accuracy", "mean"]
        )
        # screening cut-offs set on validation reach about their specificity on test
        for s in (90, 95):
            reached = rows.loc[f"specificity_at_{s}_threshold", "mean"]
            assert abs(reached - s / 100) < 0.1, (backbone, s, reached)
    cal = pd.read_csv(results / "eval" / "cric" / "calibration.csv")
    lin = cal[(cal.protocol == "linear") & (cal.block == "all")].set_index(["backbone", "metric"])
    for backbone in ("cytofm", "random"):
        assert {"ece", "ece_scaled", "nll", "nll_scaled", "coverage", "set_size"} <= {
            m for b, m in lin.index if b == backbone
        }
        # scaling fitted on validation does not make the test NLL worse by much
        assert (
            lin.loc[(backbone, "nll_scaled"), "mean"] <= lin.loc[(backbone, "nll"), "mean"] + 0.05
        )
