"""Learned nucleus detectors as plug-ins (``cells.detector: tiatoolbox | cellpose``).

No accuracy is claimed for them: these tests check the interface. A model with local,
randomly initialised weights runs end to end through the cells stage; the window stitching and
resampling put centres where they belong (checked with a stand-in model whose output is known).
"""

from __future__ import annotations

import dataclasses
import sys
import types

import cv2
import numpy as np
import pytest
import torch

from cytofm.cells.detect import make_detector
from cytofm.cells.learned import CellposeDetector, WindowedDetector, centroids_of_masks
from cytofm.config import CellsConfig, TilingConfig, TrackingConfig
from cytofm.errors import ConfigError
from cytofm.stages.cells import run_cells
from cytofm.stages.context import JobContext
from cytofm.stages.tile import run_tile
from cytofm.store import open_store
from tests import corpus as C

OFF = JobContext(tracking=TrackingConfig(tracking_uri="none"))
WHITE = np.array([240.0, 240.0, 240.0], np.float32)


def _discs(shape, centres, radius):
    img = np.full((*shape, 3), 235, np.uint8)
    for x, y in centres:
        cv2.circle(img, (int(x), int(y)), radius, (60, 40, 110), -1, lineType=cv2.LINE_AA)
    return img


def _darkness_peaks(threshold, min_distance):
    """A stand-in 'model' (blurred darkness) and peak finder with a known answer."""

    def predict(batch):  # (n, h, w, 3) -> (n, h, w, 1); output = centre of the input window
        dark = 1 - batch.mean(-1, keepdims=True) / 255.0
        out = np.stack([cv2.GaussianBlur(d, (0, 0), 3)[..., None] for d in dark])
        m = (out.shape[1] - 24) // 2
        return out[:, m : m + 24, m : m + 24]

    def peaks(prob):
        p = prob[..., 0]
        k = np.ones((2 * min_distance + 1,) * 2, np.uint8)
        return ((p >= cv2.dilate(p, k)) & (p > threshold))[..., None].astype(np.float32)

    return predict, peaks


def test_windowed_detector_stitches_windows_and_maps_back_to_region_pixels():
    """Region at 0.5 um/px, model at 0.25 um/px, 24-px outputs from 40-px inputs: the centres
    come back in the region's pixels, each disc found once, wherever it falls on the grid."""
    truth = np.array([[30.5, 40.5], [71.5, 22.5], [47.5, 90.5], [100.5, 100.5], [12.5, 110.5]])
    region = _discs((128, 128), truth, 4)
    predict, peaks = _darkness_peaks(0.2, 6)
    det = WindowedDetector(predict, peaks, 0.25, (40, 40), (24, 24), stride=(24, 24))
    xy, scores = det(region, 0.5)
    assert len(xy) == len(truth) and len(scores) == len(xy)
    d = np.linalg.norm(xy[:, None] - truth[None], axis=-1)
    assert d.min(1).max() < 1.0 and sorted(d.argmin(1)) == list(range(len(truth)))


def test_windowed_detector_refuses_gaps_between_windows():
    predict, peaks = _darkness_peaks(0.2, 6)
    with pytest.raises(ValueError, match="gaps"):
        WindowedDetector(predict, peaks, 0.5, (40, 40), (24, 24), stride=(30, 30))


def _random_tiatoolbox_weights(name, path):
    from pydoc import locate

    from tiatoolbox.models.architecture import PRETRAINED_INFO

    arch = PRETRAINED_INFO[name]["architecture"]
    module, cls = arch["class"].rsplit(".", 1)
    torch.manual_seed(0)
    model = getattr(locate(f"tiatoolbox.models.architecture.{module}"), cls)(**arch["kwargs"])
    torch.save(model.state_dict(), path)
    return path


def test_tiatoolbox_model_with_local_random_weights_runs_end_to_end(tmp_path):
    """sccnn-conic with randomly initialised local weights: the cells stage runs, detections
    are at the model's peaks mapped to level-0 px (inside the slide), and the store names it."""
    weights = _random_tiatoolbox_weights("sccnn-conic", tmp_path / "sccnn.pth")
    slide = C.write_svs(tmp_path / "s.svs", C.smear(size=512, seed=3), mpp=0.25)
    tiling = TilingConfig(tile_px=128)  # 64-um tiles: 4 cover the 128-um slide
    run_tile(slide, "s", None, tiling, tmp_path / "t.zarr", tmp_path / "qc.png", job=OFF)
    boxes = open_store(tmp_path / "t.zarr")["boxes"][:]
    cfg = CellsConfig(
        detector="tiatoolbox", model="sccnn-conic", weights=str(weights), device="cpu"
    )
    out = run_cells(slide, "s", None, tmp_path / "t.zarr", cfg, tmp_path / "c.zarr",
                    tmp_path / "c.png", OFF)  # fmt: skip
    store = open_store(tmp_path / "c.zarr")
    assert store.attrs["detector"] == "tiatoolbox"
    coords = store["coords"][:]
    assert out["n_cells"] == len(coords) > 0  # random weights still give peaks somewhere
    # level-0 px: every centre lies in the tile whose cell it is
    inside = (
        (coords[:, None, 0] >= boxes[None, :, 0]) & (coords[:, None, 0] < boxes[None, :, 2])
        & (coords[:, None, 1] >= boxes[None, :, 1]) & (coords[:, None, 1] < boxes[None, :, 3])
    )  # fmt: skip
    tile_of = store["tile_index"][:]
    assert inside[np.arange(len(coords)), tile_of].all()
    # the detector alone, on one region: centres are the model's peaks, in region pixels
    det = make_detector(dataclasses.replace(cfg, merge_um=0.0), WHITE)
    region = np.ascontiguousarray(C.smear(size=200, seed=4)[50:146, 50:146])
    xy, _ = det(region, 0.25)  # the model works at 0.25 um/px: no resampling here
    found = np.argwhere(det.peaks(det.dense(region))[..., 0] > 0)[:, ::-1]
    assert len(xy) and np.array_equal(
        np.unique(np.round(xy).astype(int), axis=0), np.unique(found, axis=0)
    )


def test_tiatoolbox_needs_a_model_and_an_existing_weights_file(tmp_path):
    with pytest.raises(ConfigError, match="needs cells.model"):
        make_detector(CellsConfig(detector="tiatoolbox"), WHITE)
    with pytest.raises(ConfigError, match="is not a file"):
        make_detector(
            CellsConfig(detector="tiatoolbox", model="sccnn-conic", weights=str(tmp_path / "x")),
            WHITE,
        )
    with pytest.raises(ConfigError, match="does not exist"):
        make_detector(CellsConfig(detector="tiatoolbox", model="no-such-model"), WHITE)


def test_centroids_of_masks():
    masks = np.zeros((20, 30), np.int32)
    masks[2:5, 3:6] = 4  # centre (4, 3), 9 px
    masks[10:12, 20:28] = 9  # centre (23.5, 10.5), 16 px
    xy, area = centroids_of_masks(masks)
    assert np.allclose(xy, [[4, 3], [23.5, 10.5]]) and area.tolist() == [9, 16]
    assert centroids_of_masks(np.zeros((4, 4), int))[0].shape == (0, 2)


def test_cellpose_adapter_follows_the_cellpose_model_api(tmp_path, monkeypatch):
    """cellpose is not installed here (it pins numpy < 2.1 or a second OpenCV build), so a
    stand-in with cellpose's API (``models.CellposeModel(gpu=, pretrained_model=)``, ``eval(x,
    diameter=) -> (masks, flows, styles)``) checks the adapter: what it asks for, and that mask
    centroids come back in the region's pixels."""
    truth = np.array([[20.0, 30.0], [60.0, 50.0]])
    calls = {}

    class Model:
        def __init__(self, gpu, pretrained_model):
            calls["init"] = (gpu, pretrained_model)

        def eval(self, x, diameter):
            calls["eval"] = (x.shape, diameter)
            masks = np.zeros(x.shape[:2], np.int32)
            for i, (cx, cy) in enumerate(truth / 2):  # at detect_mpp 1.0 (region is 0.5)
                cv2.circle(masks, (int(cx), int(cy)), 4, i + 1, -1)
            return masks, None, None

    fake = types.ModuleType("cellpose")
    fake.models = types.SimpleNamespace(CellposeModel=Model)
    monkeypatch.setitem(sys.modules, "cellpose", fake)
    weights = tmp_path / "my_nuclei_model"
    weights.write_bytes(b"x")
    cfg = CellsConfig(detector="cellpose", weights=str(weights), device="cpu")
    det = make_detector(cfg, WHITE)
    assert isinstance(det, CellposeDetector)
    assert calls["init"] == (False, str(weights))
    xy, _ = det(np.full((100, 100, 3), 230, np.uint8), 0.5)
    assert calls["eval"] == ((50, 50, 3), 9.0)  # resampled to 1 um/px; 9 um nuclei
    assert np.abs(np.sort(xy, 0) - truth).max() <= 1.0
    monkeypatch.setitem(sys.modules, "cellpose", None)  # not installed: a clear message
    with pytest.raises(ConfigError, match="pip install cellpose"):
        make_detector(cfg, WHITE)
