import numpy as np
import pytest
import tifffile

from cytofm.config import CellsConfig, TilingConfig
from cytofm.errors import MissingResolutionError
from cytofm.stages.cells import run_cells
from cytofm.stages.tile import run_tile
from cytofm.store import open_store


@pytest.fixture(scope="module")
def tiled(synthetic_slide, tmp_path_factory):
    path, canvas = synthetic_slide
    out = tmp_path_factory.mktemp("stages")
    cfg = TilingConfig(tile_px=256, save_images=True)
    summary = run_tile(path, "syn", None, cfg, out / "tiles.zarr", out / "qc.png")
    return path, canvas, out, summary


def test_tile_store_contents_and_provenance(tiled):
    _path, _canvas, out, summary = tiled
    store = open_store(out / "tiles.zarr")
    n = summary["n_tiles"]
    assert 0 < n <= summary["n_tiles_total"] == 16  # 2048 px at 0.25 -> 4 x 4 tiles of 128 um
    assert store["boxes"].shape == (n, 4) and store["coords"].shape == (n, 2)
    assert store["images"].shape == (n, 256, 256, 3)
    prov = store.attrs["provenance"]
    assert prov["stage"] == "tile" and prov["slide"]["mpp"] == 0.25
    assert len(prov["slide_sha256"]) == 64 and prov["config"]["tile_px"] == 256
    assert "path" not in str(prov["slide"])  # file names stay out of provenance
    assert (out / "qc.png").stat().st_size > 1000


def test_cells_store(tiled):
    path, canvas, out, _ = tiled
    cfg = CellsConfig(patch_px=32, chunk=16)
    summary = run_cells(
        path, "syn", None, out / "tiles.zarr", cfg, out / "cells.zarr", out / "gallery.png"
    )
    store = open_store(out / "cells.zarr")
    n = summary["n_cells"]
    assert abs(n - len(canvas.cells)) <= 3
    assert store["images"].shape == (n, 32, 32, 3) and store["images"].dtype == np.uint8
    assert store["images"].chunks[0] == 16
    assert store["coords"].shape == (n, 2) and store["scores"].shape == (n,)
    assert store["ids"][0] == "syn:0"
    assert store.attrs["mpp"] == pytest.approx(1.5) and store.attrs["patch_um"] == 48.0
    assert (
        store.attrs["provenance"]["slide_sha256"]
        == open_store(out / "tiles.zarr").attrs["provenance"]["slide_sha256"]
    )
    # patches are centred on nuclei: the centre is darker than the patch border
    imgs = store["images"][:].astype(float).mean(axis=3)
    assert (imgs[:, 14:18, 14:18].mean(axis=(1, 2)) < imgs[:, :2, :].mean(axis=(1, 2))).mean() > 0.9


def test_cells_are_deterministic(tiled):
    path, _, out, _ = tiled
    cfg = CellsConfig(patch_px=32)
    for name in ("a", "b"):
        run_cells(
            path, "syn", None, out / "tiles.zarr", cfg, out / f"{name}.zarr", out / f"{name}.png"
        )
    a, b = open_store(out / "a.zarr"), open_store(out / "b.zarr")
    assert np.array_equal(a["images"][:], b["images"][:])
    assert np.array_equal(a["coords"][:], b["coords"][:])


def test_missing_mpp_fails_the_job_and_writes_nothing(tmp_path):
    path = tmp_path / "nores.tif"
    tifffile.imwrite(path, np.full((512, 512, 3), 240, np.uint8), tile=(256, 256))
    with pytest.raises(MissingResolutionError, match="slide 'nores'.*'mpp' column"):
        run_tile(path, "nores", None, TilingConfig(), tmp_path / "t.zarr", tmp_path / "qc.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nores.tif"]


def test_tile_on_two_threads_gives_the_same_store(tiled, tmp_path):
    """Thumbnail blocks read on two threads and the checksum taken beside them: the same
    grid, mask and provenance checksum as on one."""
    from cytofm.provenance import file_sha256

    path, _canvas, out, _summary = tiled
    cfg = TilingConfig(tile_px=256, save_images=True)
    run_tile(path, "syn", None, cfg, tmp_path / "t2.zarr", tmp_path / "qc.png", threads=2)
    one, two = open_store(out / "tiles.zarr"), open_store(tmp_path / "t2.zarr")
    assert np.array_equal(one["boxes"][:], two["boxes"][:])
    assert np.array_equal(one["mask"][:], two["mask"][:])
    assert two.attrs["provenance"]["slide_sha256"] == file_sha256(path)
    assert one.attrs["provenance"]["slide_sha256"] == file_sha256(path)
