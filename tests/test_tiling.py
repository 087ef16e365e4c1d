import numpy as np
import pytest

from cytofm.wsi.reader import Slide
from cytofm.wsi.tiling import tile_grid


class FakeSlide(Slide):
    def __init__(self, w, h, mpp):
        super().__init__(
            path=None,
            slide_id="fake",
            mpp=mpp,
            dimensions=(w, h),
            level_downsamples=[1.0],
            level_dimensions=[(w, h)],
            mpp_source="test",
        )


def test_grid_covers_the_slide_and_keeps_masked_tiles():
    slide = FakeSlide(1000, 600, 0.25)  # 250 x 150 um
    mask = np.zeros((150, 250), bool)  # 1 um/px mask
    mask[10, 10] = True  # top-left tile
    mask[140, 240] = True  # bottom-right tile
    grid = tile_grid(slide, mask, mask_mpp=1.0, tile_px=100, mpp=0.5, min_foreground=0.0)
    # tiles of 100 px at 0.5 um/px = 50 um = 200 level-0 px -> 5 x 3 grid
    assert grid.n_total == 15 and len(grid) == 2
    assert grid.boxes.tolist() == [[0, 0, 200, 200], [800, 400, 1000, 600]]
    assert grid.centres.tolist() == [[100, 100], [900, 500]]


def test_min_foreground_fraction():
    slide = FakeSlide(800, 800, 0.5)
    mask = np.zeros((100, 100), bool)  # 4 um/px
    mask[:25, :25] = True  # fills the first 200-um tile completely... (tile = 50 mask px)
    mask[60:62, 60:62] = True  # 4 of 2500 px of another tile
    grid = tile_grid(slide, mask, mask_mpp=4.0, tile_px=400, mpp=0.5, min_foreground=0.01)
    assert len(grid) == 1
    assert grid.foreground[0] == pytest.approx(625 / 2500)


def test_fractional_tile_size_has_no_gaps():
    slide = FakeSlide(1001, 999, 0.3)
    mask = np.ones((80, 80), bool)
    grid = tile_grid(slide, mask, mask_mpp=4.0, tile_px=100, mpp=0.5, min_foreground=0.0)
    b = grid.boxes
    xs, ys = np.unique(b[:, 0]), np.unique(b[:, 1])
    assert b[:, 2].max() >= 1001 and b[:, 3].max() >= 999
    widths = np.unique(b[:, 2] - b[:, 0])
    assert set(widths.tolist()) <= {166, 167}
    assert len(xs) * len(ys) == len(b) == grid.n_total
