"""Evidence that pretraining learns: real blood cells, pretrained vs. random weights.

PBC (8 classes, 1,200 cells) is imported at 64 px; a tiny ViT is pretrained for 200 steps on
the unlabelled images and the evaluation's linear probe on its frozen features (stratified
60/20/20 split, C chosen on validation) is compared with the same architecture at random
initialisation. Measured on the 2-core machine with the views made in batches: 0.550 vs. 0.423
balanced accuracy on the 240 test rows (margin +0.127; random weights' seed-to-seed std 0.027).
With the earlier per-image views, whose parameters were drawn in another order, the same
recipe gave +0.090 with pretraining seed 0 and +0.173 with seed 1: the pretraining draw matters
more than the probe's. The test asks for a margin of 0.08: above the random network's noise,
below every margin measured so far."""

import pytest

from cytofm.config import DatasetConfig, PretrainConfig
from cytofm.ssl.probe import ssl_vs_random
from cytofm.stages.dataset import run_import
from cytofm.stages.pretrain import run_pretrain
from cytofm.store import open_store
from tests.conftest import shared

pytestmark = pytest.mark.slow_ok  # about two minutes; runs in CI


def test_pretraining_beats_random_weights_on_pbc(tmp_path):
    root = shared("pbc_blood_subset", "images")
    run_import(DatasetConfig(name="pbc", path=str(root), patch_px=64), tmp_path / "pbc.zarr")
    cfg = PretrainConfig().updated(
        {
            "optim.steps": 200,
            "optim.warmup_steps": 20,
            "teacher.temp_warmup_steps": 20,
            "teacher.momentum": 0.98,
            "optim.lr": 0.008,
            "probe.dataset": "",
            "checkpoint_every": 1000,
        }
    )
    run_pretrain(cfg, [tmp_path / "pbc.zarr"], tmp_path / "model")
    ds = open_store(tmp_path / "pbc.zarr")
    res = ssl_vs_random(
        tmp_path / "model" / "backbone",
        ds["images"][:],
        ds["labels"][:],
        ds["groups"][:],
        seeds=(0, 1),
    )
    print({k: res[k] for k in ("ssl_mean", "random_mean", "random_std", "margin", "split")})
    assert res["random_mean"] > res["chance"]  # the probe itself works
    assert res["margin"] >= 0.08, res
