import json
import uuid

import h5py
import numpy as np
import pytest
import shapely

from cytofm.config import CellsConfig, ExportConfig, TilingConfig
from cytofm.errors import InputDataError
from cytofm.export.geojson import slide_geojson
from cytofm.stages.cells import run_cells
from cytofm.stages.embed import write_feature_store
from cytofm.stages.export import run_export_features, run_export_geojson
from cytofm.stages.tile import run_tile
from cytofm.store import open_store


@pytest.fixture(scope="module")
def stores(synthetic_slide, tmp_path_factory):
    """Tile and cell stores of the synthetic slide, and a feature store of its cells."""
    path, _ = synthetic_slide
    out = tmp_path_factory.mktemp("export")
    run_tile(path, "syn", None, TilingConfig(tile_px=256), out / "t.zarr", out / "qc.png")
    cfg = CellsConfig(patch_px=32)
    run_cells(path, "syn", None, out / "t.zarr", cfg, out / "c.zarr", out / "g.png")
    cells = open_store(out / "c.zarr")
    feats = np.random.default_rng(0).normal(size=(cells["coords"].shape[0], 8))
    write_feature_store(out / "f.zarr", feats, cells, {"stage": "embed"}, "toy")
    return out


def test_geojson_is_what_qupath_imports_with_the_stores_coordinates(stores, tmp_path):
    """A FeatureCollection of Features with objectType and classification {name, color} as
    QuPath writes them; every cell a detection whose shape is centred on the store's centre
    (level-0 px); tissue annotations that hold the cells; ids unique UUIDs."""
    out = tmp_path / "syn.geojson"
    counts = run_export_geojson(stores / "c.zarr", stores / "t.zarr", out, ExportConfig(tiles=True))
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection"
    feats = doc["features"]
    cells = open_store(stores / "c.zarr")
    coords = np.asarray(cells["coords"][:], float)
    kinds = [f["properties"]["objectType"] for f in feats]
    assert counts["detection"] == kinds.count("detection") == len(coords) > 10
    assert counts["tile"] == open_store(stores / "t.zarr")["boxes"].shape[0]
    assert counts["annotation"] >= 1
    ids = [f["id"] for f in feats]
    assert len(set(ids)) == len(ids) and all(uuid.UUID(i) for i in ids)
    for f in feats:
        assert f["type"] == "Feature"
        cls = f["properties"]["classification"]
        assert isinstance(cls["name"], str) and len(cls["color"]) == 3
    shapes = [shapely.from_geojson(json.dumps(f["geometry"])) for f in feats]
    assert all(s.is_valid for s in shapes)
    det = [
        (f, s)
        for f, s in zip(feats, shapes, strict=True)
        if s and "measurements" in f["properties"]
    ]
    centres = np.array([[s.centroid.x, s.centroid.y] for _, s in det])
    stated = np.array(
        [
            [f["properties"]["measurements"][k] for k in ("centre x (px)", "centre y (px)")]
            for f, _ in det
        ]
    )
    assert np.allclose(stated, coords) and np.abs(centres - coords).max() < 0.05
    # the cell circle has the configured diameter: 9 um at 0.25 um/px = 36 px
    area = det[0][1].area
    assert area == pytest.approx(np.pi * 18**2, rel=0.05)
    tissue = shapely.union_all(
        [
            s
            for f, s in zip(feats, shapes, strict=True)
            if f["properties"]["objectType"] == "annotation"
        ]
    )
    inside = shapely.contains_xy(tissue, coords[:, 0], coords[:, 1])
    assert inside.mean() > 0.95


def test_geojson_carries_attention_and_cell_classes(stores):
    n = open_store(stores / "c.zarr")["coords"].shape[0]
    att = np.linspace(0, 1, n)
    probs = np.tile([[0.2, 0.8]], (n, 1))
    probs[0] = [0.9, 0.1]
    doc = slide_geojson(
        stores / "c.zarr", stores / "t.zarr", attention=att, class_probs=probs,
        class_names=["normal", "abnormal"],
    )  # fmt: skip
    det = [f for f in doc["features"] if f["properties"]["objectType"] == "detection"]
    assert [d["properties"]["measurements"]["attention"] for d in det] == pytest.approx(att)
    assert det[0]["properties"]["classification"]["name"] == "normal"
    assert {d["properties"]["classification"]["name"] for d in det[1:]} == {"abnormal"}
    assert det[1]["properties"]["measurements"]["p(abnormal)"] == pytest.approx(0.8)
    with pytest.raises(InputDataError, match="row order"):
        slide_geojson(stores / "c.zarr", stores / "t.zarr", attention=att[:-1])


def test_hdf5_in_trident_and_stamp_layouts(stores, tmp_path):
    """TRIDENT: features + coords (int, level-0 top-left corners) with the attributes its
    reader needs; STAMP: feats + coords in um with its file attributes; both read back."""
    out = run_export_features(
        stores / "f.zarr", stores / "c.zarr", tmp_path / "tri.h5", tmp_path / "stamp.h5"
    )
    cells, feats = open_store(stores / "c.zarr"), open_store(stores / "f.zarr")
    centres = np.asarray(cells["coords"][:], float)
    expected = np.asarray(feats["features"][:], np.float32)
    size0 = 48.0 / 0.25  # patch_um / slide mpp
    with h5py.File(tmp_path / "tri.h5") as f:
        assert np.array_equal(f["features"][:], expected)
        assert f["coords"].dtype == np.int64
        assert np.array_equal(f["coords"][:], np.round(centres - size0 / 2))
        attrs = dict(f["coords"].attrs)
        assert attrs["patch_size"] == 32 and attrs["patch_size_level0"] == 192
        assert attrs["level0_magnification"] == pytest.approx(40.0)
        assert attrs["target_magnification"] == pytest.approx(10 * 32 / 48)
        assert f["features"].attrs["encoder"] == "toy" and f["features"].attrs["name"] == "syn"
        assert f.attrs["patch_size_um"] == 48.0 and f.attrs["slide_mpp"] == 0.25
        assert np.allclose(f["centres"][:], centres)
    with h5py.File(tmp_path / "stamp.h5") as f:
        assert np.array_equal(f["feats"][:], expected)
        assert np.allclose(f["coords"][:], (centres - size0 / 2) * 0.25, atol=1e-3)
        assert f.attrs["unit"] == "um" and f.attrs["tile_size_um"] == 48.0
        assert f.attrs["tile_size_px"] == 32 and f.attrs["feat_type"] == "tile"
        assert f.attrs["extractor"] == "toy"
    assert out["n"] == len(centres) and out["dim"] == 8


def test_exports_refuse_mismatched_stores(stores, tmp_path):
    with pytest.raises(InputDataError, match="not the cell or tile store"):
        run_export_features(stores / "f.zarr", stores / "f.zarr", tmp_path / "a", tmp_path / "b")
    other = open_store(stores / "t.zarr")
    import zarr

    copy = zarr.open_group(tmp_path / "t2.zarr", mode="w")
    copy.attrs.update({**dict(other.attrs), "slide_id": "other"})
    copy.create_array("mask", data=other["mask"][:])
    with pytest.raises(InputDataError, match="same slide"):
        slide_geojson(stores / "c.zarr", tmp_path / "t2.zarr")
