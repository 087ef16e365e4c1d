"""Direct tile decoding of tiled TIFF slides: OpenSlide's pixels exactly, each tile once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cytofm.wsi.reader import open_slide
from cytofm.wsi.tiled import TiledTiff, TileReader

CMU1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides" / "cmu-1-small-region.svs"


def _openslide_rgb(slide, x, y, w, h, level):
    """The region as OpenSlide composes it (white outside the level)."""
    ds = slide.level_downsamples[level]
    rgba = np.asarray(slide._osr.read_region((round(x * ds), round(y * ds)), level, (w, h)))
    a = rgba[..., 3:].astype(np.float32) / 255
    return (rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)


def _regions(slide, level, rng, n=12):
    """Random regions of a level, some across its right and bottom edges and its origin."""
    lw, lh = slide.level_dimensions[level]
    out = [(0, 0, min(lw, 300), min(lh, 200)), (lw - 50, lh - 40, 120, 90), (-20, -30, 64, 64)]
    for _ in range(n):
        w, h = int(rng.integers(1, 400)), int(rng.integers(1, 400))
        out.append((int(rng.integers(-10, lw - 1)), int(rng.integers(-10, lh - 1)), w, h))
    return out


def _check_same_pixels(path: Path) -> None:
    rng = np.random.default_rng(0)
    with open_slide(path, "s", 0.25) as slide:
        assert slide._tiles is not None, "a plain tiled TIFF is read directly"
        for level in range(len(slide.level_dimensions)):
            assert slide._tiles.level(level, slide._osr) is not None
            for x, y, w, h in _regions(slide, level, rng):
                ours = slide.read_level(x, y, w, h, level)
                assert np.array_equal(ours, _openslide_rgb(slide, x, y, w, h, level)), (
                    level,
                    (x, y, w, h),
                )


def test_tiles_decode_to_openslides_pixels(synthetic_slide):
    _check_same_pixels(synthetic_slide[0])


@pytest.mark.skipif(not CMU1.is_file(), reason="needs ../shared/data/slides (the real CMU-1 SVS)")
def test_aperio_svs_tiles_decode_to_openslides_pixels():
    """Aperio's JPEG tiles (RGB colour space, shared JPEG tables) as OpenSlide shows them."""
    _check_same_pixels(CMU1)


def test_planned_reads_decode_each_tile_once_and_keep_nothing_after(synthetic_slide, monkeypatch):
    decoded: list[int] = []
    real = TileReader.decode

    def counting(self, index):
        decoded.append(index)
        return real(self, index)

    monkeypatch.setattr(TileReader, "decode", counting)
    with open_slide(synthetic_slide[0], "s", 0.25) as slide:
        lv = slide._tiles.level(0, slide._osr)
        decoded.clear()  # the check's tile
        # overlapping regions, as the cell stage's blocks with their margins
        regions = [(x - 40, y - 40, 600, 600) for y in (0, 520, 1040) for x in (0, 520, 1040)]
        slide.plan_reads(0, regions)
        for region in regions:
            slide.read_level(*region, 0)
        needed = {i for r in regions for i in lv.tiles(*r)}
        assert sorted(decoded) == sorted(needed), "every tile decoded exactly once"
        assert not lv.cache and not lv.awaited, "nothing kept once the plan is read"
        decoded.clear()
        slide.read_level(0, 0, 300, 300, 0)  # unplanned: decoded, not kept
        assert decoded and not lv.cache


def test_a_level_decoding_differently_is_read_through_openslide(synthetic_slide, monkeypatch):
    real = TileReader.decode
    monkeypatch.setattr(TileReader, "decode", lambda self, i: real(self, i) ^ np.uint8(1))
    with open_slide(synthetic_slide[0], "s", 0.25) as slide:
        assert slide._tiles.level(0, slide._osr) is None
        region = slide.read_level(100, 100, 300, 300, 0)
        assert np.array_equal(region, _openslide_rgb(slide, 100, 100, 300, 300, 0))


def test_only_plain_tiff_vendors_are_read_directly(synthetic_slide):
    assert TiledTiff.open(synthetic_slide[0], "hamamatsu", [(2048, 2048)]) is None
    assert TiledTiff.open(synthetic_slide[0], "generic-tiff", [(999, 999)]) is None
