"""Evidence that pretraining learns: real blood cells, pretrained vs. random weights, scored
on cells pretraining never read.

PBC (8 classes, 1,200 cells) is imported at 64 px; a tiny ViT is pretrained for 200 steps on the
images with the probe task's test rows left out (as the workflow's inductive pretraining leaves
them out), and the evaluation's linear probe on its frozen features (the task's 60/20/20 split,
C chosen on validation) is compared with the same architecture at random initialisation on those
test rows. The threshold comes from ``benchmarks/ssl_learns.py``, which runs the same recipe
with three pretraining seeds: their mean margin minus three standard deviations
(``benchmarks/results/ssl_learns.json``), so any pretraining draw of a recipe that learns
passes, and one that stops learning fails. The recipe runs in its own process, as a workflow
job runs pretraining."""

import json
import subprocess
import sys

import pytest

from benchmarks.ssl_learns import PATCH_PX, RECIPE, RESULTS, ROOT
from tests.conftest import shared

pytestmark = pytest.mark.slow_ok  # about two minutes; runs in CI


def test_pretraining_beats_random_weights_on_pbc_cells_it_never_read(tmp_path):
    shared("pbc_blood_subset", "images")  # skips with the reason when the data is absent
    measured = json.loads((RESULTS / "ssl_learns.json").read_text())
    # the threshold was measured on this recipe, not another
    assert measured["recipe"] == RECIPE and measured["patch_px"] == PATCH_PX
    assert len(measured["runs"]) >= 3 and measured["threshold"] > 0.02
    runs = tmp_path / "runs.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ssl_learns.py"), "--seeds", "0"]
    proc = subprocess.run(
        [*cmd, "--runs-to", str(runs)], capture_output=True, text=True, timeout=1200, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (res,) = json.loads(runs.read_text())
    print({k: res[k] for k in ("ssl_mean", "random_mean", "random_std", "margin", "split")})
    n_test = res["split"]["n_test"]
    assert res["left_out"]["pbc"]["rows"] == n_test > 200  # scored rows pretraining never read
    assert res["random_mean"] > res["chance"]  # the probe itself works
    assert res["margin"] >= measured["threshold"], (res["margin"], measured["threshold"])
