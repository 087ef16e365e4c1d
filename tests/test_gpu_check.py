"""benchmarks/gpu_check.py runs end to end (its --smoke mode: tiny sizes on the CPU), so the
script is ready whenever a CUDA machine is at hand; its GPU figures come from such a machine."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow_ok


def test_gpu_check_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--out",
         str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={"OMP_NUM_THREADS": "2", "MLFLOW_TRACKING_URI": "none",
             "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    (pre,) = res["pretrain"]  # no GPUs: the single-process run only
    assert pre["images_per_s"] > 0 and pre["flops_per_step"] > 0
    assert 0 <= pre["data_wait_fraction"] <= 1
    (compiled,) = res["pretrain_compiled"]  # asked for, but compile is a CUDA switch
    assert compiled["compile"] and not compiled["compiled"]
    assert res["pretrain_vitb"][0]["images_per_s"] > 0
    # the loader alone, and the views made from its batches
    assert res["loader"]["loader_images_per_s"] > 0 and res["loader"]["views_images_per_s"] > 0
    assert "errors" not in res, res.get("errors")
    assert [e["arch"] for e in res["embedding"]] == [
        "vit_small_patch16_224",
        "vit_base_patch16_224",
    ]
    assert all(0 <= e["zarr_write_fraction"] < 1 for e in res["embedding"])
    assert res["lora"]["steps_per_s"] > 0 and math.isfinite(res["lora"]["steps_per_s"])
    assert res["bf16_vs_fp32"]["cosine_mean"] > 0.9
    md = (tmp_path / "gpu_check.md").read_text()
    for heading in ("## Pretraining", "## The pretraining loader alone", "## Embedding", "## LoRA",
                    "## bf16 vs fp32"):  # fmt: skip
        assert heading in md
