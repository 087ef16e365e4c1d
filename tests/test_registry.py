"""Plug-ins from other packages: a detector (or reader) installed with an entry point is found by
name, and the workflow's cells stage uses it, without any change to cytofm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from cytofm.config import CellsConfig, TilingConfig
from cytofm.errors import ConfigError
from cytofm.registry import Registry

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
import numpy as np


def make(cfg, background):
    """A nucleus at the centroid of every dark blob of the region the cells stage hands over."""

    def detect(rgb, mpp):
        import cv2

        dark = (rgb.min(axis=2) < 150).astype(np.uint8)
        n, _, _, centroids = cv2.connectedComponentsWithStats(dark)
        return centroids[1:].astype(np.float64), np.ones(n - 1, np.float32)

    return detect


def open_slide(path, slide_id, mpp):
    from cytofm.wsi.reader import ImageSlide

    return ImageSlide(path, slide_id, mpp)


from cytofm.eval.protocols import Protocol


def _nearest_mean(inp, rows):
    feats, labels = inp.features, inp.labels
    means = np.stack([feats[rows][labels[rows] == c].mean(0) for c in range(inp.n_classes)])
    d = ((feats[inp.split.test][:, None] - means[None]) ** 2).sum(-1)
    p = np.exp(-(d - d.min(1, keepdims=True)))
    return p / p.sum(1, keepdims=True)


class NearestMean(Protocol):
    """Nearest class mean of the features: on the training split, and at 2 shots per seed."""

    name = "nearest-mean-test"

    def once(self):
        return _nearest_mean(self.inputs, self.inputs.split.train), {"rule": "nearest mean"}

    @classmethod
    def budgets(cls, task, cfg):
        return [("shots", 2)]

    def run(self, rows, seed, budget):
        return _nearest_mean(self.inputs, rows), {"rule": "nearest mean"}


def tiny_net(spec):
    import torch

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    net.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3}
    net.num_features = 8
    return net
'''


def _install_plugin(root: Path) -> Path:
    """A package `cytofm_gridplugin` and its metadata on a folder, as pip would install it."""
    site = root / "site"
    (site / "cytofm_gridplugin").mkdir(parents=True)
    (site / "cytofm_gridplugin" / "__init__.py").write_text(PLUGIN)
    info = site / "cytofm_gridplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cytofm-gridplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [cytofm.detectors]
            grid-test = cytofm_gridplugin:make
            missing-test = cytofm_gridplugin:no_such_factory

            [cytofm.readers]
            plain-test = cytofm_gridplugin:open_slide

            [cytofm.backbones]
            tinynet-test = cytofm_gridplugin:tiny_net

            [cytofm.protocols]
            nearest-mean-test = cytofm_gridplugin:NearestMean
            """
        )
    )
    return site


def test_names_come_from_entry_points_and_errors_say_how_to_add_one(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_install_plugin(tmp_path)))
    reg: Registry = Registry("nucleus detector", "cytofm.detectors", "cells.detector")
    reg.register("builtin")(lambda cfg, bg: None)
    assert {"builtin", "grid-test", "missing-test"} <= set(reg.names())
    assert "grid-test" in reg and reg["grid-test"].__module__ == "cytofm_gridplugin"
    named = r"cells.detector: no nucleus detector named 'nope'; available: .*'grid-test'"
    with pytest.raises(ConfigError, match=named + r".*entry-points.\"cytofm.detectors\""):
        reg["nope"]
    with pytest.raises(ConfigError, match="entry point 'cytofm_gridplugin:no_such_factory'.*"):
        reg["missing-test"]
    # the config checks plug-in names when it is built, before any job runs
    assert CellsConfig(detector="grid-test").detector == "grid-test"
    assert TilingConfig(backend="plain-test").backend == "plain-test"
    with pytest.raises(ConfigError, match="tiling.backend: no slide reader named 'tiff2'"):
        TilingConfig(backend="tiff2")


def test_a_backbone_kind_from_another_package_embeds(tmp_path, monkeypatch):
    from cytofm.eval.backbones import BackboneSpec, load_backbone_spec
    from cytofm.eval.features import embed_array

    monkeypatch.syspath_prepend(str(_install_plugin(tmp_path)))
    with pytest.raises(ConfigError, match=r"backbones.x.kind must be one of .*'tinynet-test'"):
        BackboneSpec("x", "tinynet")
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights")
    spec = BackboneSpec("mine", "tinynet-test", weights=str(weights))
    bb = load_backbone_spec(spec)
    assert (bb.input_size, bb.mean, bb.std) == (32, (0.5,) * 3, (0.25,) * 3)  # from the model
    assert bb.identity["architecture"] == "tinynet-test" and bb.identity["source"] == "w.bin"
    images = np.random.default_rng(0).integers(0, 255, (5, 48, 48, 3), dtype=np.uint8)
    feats = embed_array(bb, images, batch_size=2, device="cpu", precision="fp32")
    assert feats.shape == (5, 8) and np.isfinite(feats).all()
    again = embed_array(load_backbone_spec(spec), images, batch_size=5, device="cpu")
    np.testing.assert_allclose(feats, again, rtol=1e-5)  # the spec's seed fixes the weights


def test_an_evaluation_protocol_from_another_package_runs_like_the_built_in_ones(
    tmp_path, monkeypatch
):
    """The evaluate stage samples the shots, summarises with CIs and writes the result JSON
    for a protocol it does not know, exactly as for its own."""
    from cytofm.config import EvalConfig, TaskConfig
    from cytofm.eval.backbones import BackboneSpec
    from cytofm.stages.evaluate import run_evaluate
    from cytofm.store import PatchStoreWriter, atomic_group

    monkeypatch.syspath_prepend(str(_install_plugin(tmp_path)))
    with pytest.raises(ConfigError, match=r"protocols: unknown \['svm'\]; choose from .*"
                       r"'nearest-mean-test'"):  # fmt: skip
        TaskConfig(name="t", dataset="toy", protocols=["svm"])
    task = TaskConfig(name="t", dataset="toy", protocols=["nearest-mean-test"], seeds=[0, 1])
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    with atomic_group(tmp_path / "toy.zarr") as g:
        w = PatchStoreWriter(g, 8, 16, {"labels": (np.int16, ()), "groups": (str, ())})
        groups = np.array([f"g{i % 15}" for i in range(90)])
        w.append(np.zeros((90, 8, 8, 3), np.uint8), labels=labels.astype(np.int16), groups=groups)
        w.close()
        g.attrs["classes"] = ["a", "b", "c"]
    with atomic_group(tmp_path / "feats.zarr") as g:
        feats = np.eye(3)[labels] * 4 + rng.normal(0, 0.5, (90, 3))
        g.create_array("features", data=feats.astype(np.float16))
    result = run_evaluate(
        task,
        EvalConfig(bootstrap=50),
        "nearest-mean-test",
        BackboneSpec("bb", "random", arch="vit_tiny_patch16_224"),
        tmp_path / "toy.zarr",
        tmp_path / "out.json",
        features_store=tmp_path / "feats.zarr",
    )
    once, shots = result["results"]
    assert once["seed_independent"] and once["runs"][0]["rule"] == "nearest mean"
    assert shots["shots"] == 2 and [r["seed"] for r in shots["runs"]] == [0, 1]
    assert all(len(r["train_rows"]) == 6 for r in shots["runs"])  # 2 per class
    assert once["summary"]["balanced_accuracy"]["mean"] > 0.9  # separable features
    assert json.loads((tmp_path / "out.json").read_text())["protocol"] == "nearest-mean-test"


def test_the_cells_stage_uses_a_detector_and_reader_from_another_package(tmp_path):
    """`snakemake` with a package on the path (what `pip install` does) that registers a
    detector and a reader by entry points: config names them, the cells store holds exactly
    what that detector found (a nucleus at each dark blob, once, in the tile holding it)."""
    site = _install_plugin(tmp_path)
    field = np.full((500, 700, 3), 232, np.uint8)
    blobs = ((150, 120), (420, 300), (600, 80))
    for x, y in blobs:
        cv2.circle(field, (x, y), 14, (90, 60, 140), -1)
    cv2.imwrite(str(tmp_path / "field.png"), field)
    (tmp_path / "sheet.tsv").write_text(f"slide_id\tpath\tmpp\nf1\t{tmp_path / 'field.png'}\t0.5\n")
    res = tmp_path / "res"
    overlay = {
        "results": str(res),
        "samples": str(tmp_path / "sheet.tsv"),
        "demo": {"enabled": False},
        "pretrain": {"enabled": False},
        "backbones": {},
        "report": {"enabled": False},
        "tiling": {"backend": "plain-test", "tile_px": 256},
        "cells": {"detector": "grid-test", "backend": "plain-test"},
        "mlflow": {"tracking_uri": "none"},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(overlay))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    exe = Path(sys.executable).with_name("snakemake")
    target = res / "cells" / "f1.zarr"
    cmd = [str(exe), str(target), "--cores", "1", "--configfile", str(tmp_path / "cfg.yaml")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    from cytofm.store import open_store

    tiles, cells = open_store(res / "tiles" / "f1.zarr"), open_store(target)
    boxes = np.asarray(tiles["boxes"][:], float)
    coords = np.asarray(cells["coords"][:], float)
    assert len(boxes) >= 2 and len(coords) == len(blobs)
    # pixel i spans [i, i + 1): a blob drawn around pixel (x, y) is centred on (x + .5, y + .5)
    assert np.abs(np.sort(coords, 0) - np.sort(np.array(blobs) + 0.5, 0)).max() <= 0.5
    tile = np.asarray(cells["tile_index"][:])
    inside = (coords >= boxes[tile, :2]) & (coords < boxes[tile, 2:])
    assert inside.all()
    assert cells.attrs["provenance"]["config"]["detector"] == "grid-test"
