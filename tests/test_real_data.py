"""Real third-party data from ../shared/data (skipped with a reason when it is absent)."""

import numpy as np
import pytest

from cytofm.config import CellsConfig, DatasetConfig, TilingConfig
from cytofm.stages.cells import run_cells
from cytofm.stages.dataset import run_import
from cytofm.stages.tile import run_tile
from cytofm.store import open_store
from cytofm.wsi.reader import open_slide
from tests.conftest import shared


def test_cmu1_mpp_read_from_the_file():
    path = shared("slides", "cmu-1-small-region.svs")
    with open_slide(path, "cmu1") as s:
        assert s.mpp == pytest.approx(0.499) and s.mpp_source == "metadata"
        assert s.vendor == "aperio" and s.dimensions == (2220, 2967)


def test_cmu1_tiles_and_cells(tmp_path):
    path = shared("slides", "cmu-1-small-region.svs")
    t = run_tile(
        path, "cmu1", None, TilingConfig(tile_px=256), tmp_path / "t.zarr", tmp_path / "qc.png"
    )
    # an H&E tissue region: much of it is foreground, but not the empty corners
    assert 0.2 < t["foreground_fraction"] < 0.98
    assert 20 < t["n_tiles"] <= t["n_tiles_total"]
    c = run_cells(
        path,
        "cmu1",
        None,
        tmp_path / "t.zarr",
        CellsConfig(patch_px=32),
        tmp_path / "c.zarr",
        tmp_path / "g.png",
    )
    store = open_store(tmp_path / "c.zarr")
    assert c["n_cells"] > 500  # a dense tissue region holds thousands of nuclei
    assert store.attrs["slide_mpp"] == pytest.approx(0.499)
    xy = store["coords"][:]
    assert xy[:, 0].max() < 2220 and xy[:, 1].max() < 2967 and xy.min() >= 0


def test_import_pbc_blood_cells(tmp_path):
    root = shared("pbc_blood_subset", "images")
    cfg = DatasetConfig(name="pbc", path=str(root), patch_px=32)
    summary = run_import(cfg, tmp_path / "pbc.zarr")
    store = open_store(tmp_path / "pbc.zarr")
    assert summary["n_images"] == 1200 and len(store.attrs["classes"]) == 8
    assert np.bincount(store["labels"][:]).tolist() == [150] * 8


def test_import_cric_with_quality_filter(tmp_path):
    csv = shared("cric_cervix_cells", "quality.csv")
    cfg = DatasetConfig(
        name="cric", path=str(csv), format="csv", query="near_empty == 0", patch_px=32
    )
    summary = run_import(cfg, tmp_path / "cric.zarr")
    assert summary["n_images"] == 1273 and summary["n_classes"] == 6
