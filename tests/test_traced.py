"""The backbone built once per run: its TorchScript copy gives the model's features, CPU
embedding loads it without timm, and a model the trace gets wrong gets no copy."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from cytofm.errors import InputDataError
from cytofm.eval.backbones import BackboneSpec, LoadedBackbone
from cytofm.eval.traced import CARD_FILE, TRACED_FILE, load_traced, materialise_backbone
from cytofm.stages.embed import run_backbone, run_embed
from cytofm.store import PatchStoreWriter, atomic_group, open_store

SPEC = BackboneSpec(
    "tiny",
    "random",
    arch="vit_small_patch16_224",
    model_args={"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32},
    input_size=32,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    seed=3,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("traced")
    images = np.random.default_rng(0).integers(0, 256, (23, 40, 40, 3), dtype=np.uint8)
    store = root / "cells.zarr"
    with atomic_group(store) as g:
        w = PatchStoreWriter(g, 40, 16, {})
        w.append(images)
        w.close()
        g.attrs["mpp"] = 0.75
    card = run_backbone(SPEC, root / "backbones" / "tiny")
    return root, store, card


def test_the_copy_gives_the_models_features_exactly(built):
    root, store, card = built
    assert card["torchscript"] == TRACED_FILE and card["trace_check"]["max_abs_diff"] == 0.0
    assert card["num_features"] == 32 and card["preprocessing"]["input_size"] == 32
    folder = root / "backbones" / "tiny"
    run_embed(SPEC, store, root / "ts.zarr", backbone_dir=folder, batch_size=7, device="cpu")
    run_embed(SPEC, store, root / "eager.zarr", batch_size=5, device="cpu")
    ts, eager = open_store(root / "ts.zarr"), open_store(root / "eager.zarr")
    assert ts.attrs["provenance"]["runtime"] == "torchscript"
    assert eager.attrs["provenance"]["runtime"] == "eager"
    assert ts.attrs["provenance"]["backbone"] == eager.attrs["provenance"]["backbone"]
    np.testing.assert_array_equal(ts["features"][:], eager["features"][:])


def test_cpu_embedding_from_the_copy_does_not_import_timm(built):
    root, store, _ = built
    code = textwrap.dedent(
        f"""
        import sys
        from cytofm.eval.backbones import BackboneSpec
        from cytofm.stages.embed import run_embed
        spec = BackboneSpec("tiny", "random", arch="vit_small_patch16_224")
        run_embed(spec, {str(store)!r}, {str(root / "sub.zarr")!r},
                  backbone_dir={str(root / "backbones" / "tiny")!r}, device="cpu")
        assert "timm" not in sys.modules, "timm was imported"
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert open_store(root / "sub.zarr")["features"].shape == (23, 32)


def test_a_model_the_trace_gets_wrong_gets_no_copy_and_jobs_build_it(built, tmp_path):
    class BatchBaked(nn.Module):
        """Scales by the batch size through a Python int: a trace bakes in the 2 it saw."""

        num_features = 4

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3 * 8 * 8, 4)

        def forward(self, x):
            return self.lin(x.flatten(1)) * int(x.shape[0])

    bb = LoadedBackbone(BatchBaked(), 8, (0.5,) * 3, (0.25,) * 3, {"name": "baked"})
    card = materialise_backbone(bb, tmp_path / "baked", {"stage": "backbone"})
    assert card["torchscript"] is None and not (tmp_path / "baked" / TRACED_FILE).exists()
    assert "batch size 1" in card["trace_check"]["error"]
    assert load_traced(tmp_path / "baked") is None

    # a folder without a copy: the job builds the model and checks it is the folder's weights
    root, store, _ = built
    folder = tmp_path / "nocopy"
    folder.mkdir()
    good = json.loads((root / "backbones" / "tiny" / CARD_FILE).read_text())
    (folder / CARD_FILE).write_text(json.dumps({**good, "torchscript": None}))
    run_embed(SPEC, store, tmp_path / "f.zarr", backbone_dir=folder, device="cpu")
    assert open_store(tmp_path / "f.zarr").attrs["provenance"]["runtime"] == "eager"
    wrong = {**good, "torchscript": None, "identity": {**good["identity"], "weights_sha256": "ab"}}
    (folder / CARD_FILE).write_text(json.dumps(wrong))
    with pytest.raises(InputDataError, match=r"weights built now .* are not those of .*nocopy"):
        run_embed(SPEC, store, tmp_path / "g.zarr", backbone_dir=folder, device="cpu")
    assert not (tmp_path / "g.zarr").exists()


def test_the_copy_follows_the_seed_of_a_random_backbone(built, tmp_path):
    _, _, card = built
    other = run_backbone(BackboneSpec(**{**SPEC.to_dict(), "seed": 4}), tmp_path / "b")
    assert other["identity"]["weights_sha256"] != card["identity"]["weights_sha256"]
    a = load_traced(tmp_path / "b").model(torch.zeros(1, 3, 32, 32))
    assert a.shape == (1, 32)


def test_a_job_of_several_stores_gives_each_its_own_features_and_a_manifest(built):
    """rule embed_slides: one backbone load for many slides' stores; each store gets the
    features a job of its own gives it, and the manifest written last lists them."""
    from cytofm.stages.embed import run_embed_many

    root, store, _ = built
    other = root / "other.zarr"
    images = np.random.default_rng(1).integers(0, 256, (9, 40, 40, 3), dtype=np.uint8)
    with atomic_group(other) as g:
        w = PatchStoreWriter(g, 40, 16, {})
        w.append(images)
        w.close()
        g.attrs["mpp"] = 0.75
    folder = root / "backbones" / "tiny"
    pairs = [(store, root / "many_a.zarr"), (other, root / "many_b.zarr")]
    manifest = root / "shards" / "00000.json"
    summary = run_embed_many(
        SPEC, pairs, backbone_dir=folder, batch_size=4, device="cpu", manifest=manifest
    )
    assert summary["n_images"] == 23 + 9 and summary["n_stores"] == 2
    for source, out in pairs:
        alone = root / f"alone_{out.name}"
        run_embed(SPEC, source, alone, backbone_dir=folder, batch_size=4, device="cpu")
        np.testing.assert_array_equal(
            open_store(out)["features"][:], open_store(alone)["features"][:]
        )
    listed = json.loads(manifest.read_text())
    assert [s["features"] for s in listed["stores"]] == [str(o) for _, o in pairs]
    assert [s["rows"] for s in listed["stores"]] == [23, 9]
    assert listed["provenance"]["stage"] == "embed"
