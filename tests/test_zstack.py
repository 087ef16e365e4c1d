"""Z-stacks: every focal plane read, the sharpest chosen per tile, recorded per tile and cell."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from cytofm.cells.extract import _read_block
from cytofm.config import CellsConfig, TilingConfig
from cytofm.report.qc import plane_colours
from cytofm.store import open_store
from cytofm.synthetic.slide import (
    class_mix,
    focal_surface,
    render_slide_canvas,
    write_zstack_tiff,
)
from cytofm.wsi.reader import open_slide
from cytofm.wsi.zstack import choose_planes, zstack_planes

BLOCK = 128


@pytest.fixture(scope="module")
def zstack(tmp_path_factory):
    rng = np.random.default_rng(3)
    canvas = render_slide_canvas(
        1536, 1536, 0.25, class_mix(True, 0.1), cells_per_mm2=600, cluster_prob=0.2,
        debris_per_mm2=30, rng=rng,
    )  # fmt: skip
    truth = focal_surface(1536, 1536, 5, BLOCK, rng)
    path = tmp_path_factory.mktemp("z") / "stack.ome.tif"
    write_zstack_tiff(path, canvas.rgb, 0.25, truth, 5, block_px=BLOCK)
    return path, truth


def test_every_plane_of_every_level_reads_as_written(zstack):
    path, _ = zstack
    assert zstack_planes(path) == 5
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        written = [series.asarray(), series.levels[1].asarray()]
    with open_slide(path, "z") as slide:  # auto picks the z-stack reader
        assert slide.backend == "zstack" and slide.planes == 5 and slide.plane == 2
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "metadata"
        assert slide.dimensions == (1536, 1536) and slide.level_downsamples[1] == 2.0
        for level in (0, 1):
            for z in range(5):
                view = slide.at_plane(z)
                assert view.plane == z and slide.plane == 2  # a view; the slide is unchanged
                got = view.read_level(100, 60, 300, 200, level)
                assert np.array_equal(got, written[level][z, 60:260, 100:400])
        with pytest.raises(ValueError, match="5 plane"):
            slide.at_plane(5)


def test_the_sharpest_plane_is_chosen_per_tile(zstack):
    path, truth = zstack
    boxes = np.array(
        [[x, y, x + 256, y + 256] for y in range(0, 1536, 256) for x in range(0, 1536, 256)]
    )
    with open_slide(path, "z") as slide:
        planes, scores = choose_planes(slide, boxes, 1.0, threads=2)
    assert scores.shape == (len(boxes), 5) and (scores > 0).all()
    true = np.array([int(np.median(truth[y0 // BLOCK : y1 // BLOCK, x0 // BLOCK : x1 // BLOCK]))
                     for x0, y0, x1, y1 in boxes])  # fmt: skip
    assert (np.abs(planes - true) <= 1).mean() >= 0.9
    assert (planes == true).mean() >= 0.6


def test_a_block_reads_each_tile_from_its_own_plane(zstack):
    path, _ = zstack
    with open_slide(path, "z") as slide:
        tb = np.array([[0, 0, 256, 256], [256, 0, 512, 256], [512, 0, 768, 256]])
        region = _read_block(slide, tb, np.array([1, 1, 4]), 0, (-20, -20, 808, 296))
        for (x0, y0, x1, y1), z in zip(tb, (1, 1, 4), strict=True):
            want = slide.at_plane(z).read_level(x0, y0, x1 - x0, y1 - y0, 0)
            assert np.array_equal(region[y0 + 20 : y1 + 20, x0 + 20 : x1 + 20], want)
        # the margins come from the block's most chosen plane
        assert np.array_equal(region[:20, :], slide.at_plane(1).read_level(-20, -20, 808, 20, 0))


def test_tile_and_cells_stages_record_the_plane_of_each_tile_and_cell(zstack, tmp_path):
    from cytofm.stages.cells import run_cells
    from cytofm.stages.tile import run_tile

    os.environ.setdefault("MLFLOW_TRACKING_URI", "none")
    path, _ = zstack
    run_tile(path, "z", None, TilingConfig(tile_px=256), tmp_path / "t.zarr", tmp_path / "qc.png")
    tiles = open_store(tmp_path / "t.zarr")
    assert tiles["plane"].shape == (len(tiles["boxes"]),)
    assert tiles["focus"].shape == (len(tiles["boxes"]), 5)
    assert tiles["plane"][:].tolist() == tiles["focus"][:].argmax(1).tolist()
    assert (tmp_path / "qc.png").stat().st_size > 1000
    out = run_cells(
        path, "z", None, tmp_path / "t.zarr", CellsConfig(), tmp_path / "c.zarr",
        tmp_path / "g.png",
    )  # fmt: skip
    cells = open_store(tmp_path / "c.zarr")
    assert out["n_cells"] > 0
    # each cell carries the plane its tile was read at
    assert cells["plane"][:].tolist() == tiles["plane"][:][cells["tile_index"][:]].tolist()


def test_plane_colours_are_distinct_per_plane():
    colours = plane_colours(np.arange(5), 5)
    assert colours.shape == (5, 3) and len({tuple(c) for c in colours}) == 5


def test_a_plain_multi_page_export_opens_when_asked_for(tmp_path):
    """Pages of one size without OME metadata: auto leaves them to the other readers; the
    zstack backend reads them as planes (the sheet gives the mpp)."""
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 255, (3, 64, 96, 3), dtype=np.uint8)
    path = tmp_path / "export.tif"
    with tifffile.TiffWriter(path) as tif:
        for p in planes:
            tif.write(p, photometric="rgb", metadata=None)
    assert zstack_planes(path) == 1
    with open_slide(path, "e", 0.5, backend="zstack") as slide:
        assert slide.planes == 3 and slide.dimensions == (96, 64)
        assert np.array_equal(slide.at_plane(2).read_level(0, 0, 96, 64, 0), planes[2])
