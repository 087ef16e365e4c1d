import cv2
import numpy as np

from cytofm.cells.extract import iter_tile_cells, resample_patches
from cytofm.wsi.reader import open_slide, sample_window


def test_resampled_patches_are_the_read_around_their_centre():
    """A patch is what a slide read of its field of view gives (Gaussian anti-alias, bilinear
    at pixel centres), computed on a window around the centre; at scale 1 on the pixel grid,
    a plain crop."""
    rng = np.random.default_rng(0)
    region = cv2.GaussianBlur(rng.integers(0, 255, (300, 300, 3), np.uint8), (0, 0), 2)
    centres = np.array([[150.0, 150.0], [120.3, 171.8], [180.5, 140.25]])
    for scale in (1.0, 1.5, 3.57):
        got = resample_patches(region, centres, 32, scale)
        for patch, (cx, cy) in zip(got, centres, strict=True):
            tx, ty = cx - 16 * scale + 0.5 * scale - 0.5, cy - 16 * scale + 0.5 * scale - 0.5
            ref = sample_window(region, scale, tx, ty, (32, 32))
            assert np.abs(patch.astype(int) - ref.astype(int)).max() <= 1
    crop = resample_patches(region, np.array([[100.0, 90.0]]), 16, 1.0)[0]
    assert np.array_equal(crop, region[82:98, 92:108])


def test_dense_patches_blur_the_region_once_with_the_same_pixels():
    """Past a density, the region is blurred once instead of each window: the patches are
    identical, since the kernel never reaches past a window's padding."""
    rng = np.random.default_rng(1)
    region = rng.integers(0, 255, (200, 220, 3), np.uint8)
    centres = rng.uniform(40, 160, (40, 2))
    dense = resample_patches(region, centres, 24, 1.5)  # 40 windows > the region's pixels
    one_by_one = np.stack([resample_patches(region, c[None], 24, 1.5)[0] for c in centres])
    assert np.array_equal(dense, one_by_one)


def test_patches_are_centred_on_their_coordinates(synthetic_slide):
    """A stored patch equals the slide read around its stored centre at the patch mpp."""
    path, _canvas = synthetic_slide

    def detector(rgb, mpp):  # a fixed point in each padded region
        return np.array([[40.0, 52.0]]), np.array([1.0], np.float32)

    with open_slide(path) as s:
        boxes = np.array([[0, 0, 512, 512], [512, 512, 1024, 1024]])
        cells = list(  # block_px=1: every tile is read as its own block
            iter_tile_cells(s, boxes, patch_px=32, patch_mpp=0.75, detector=detector, block_px=1)
        )
        for c in cells:
            assert len(c.images) == 1
            x, y = c.coords[0]
            f = 0.75 / 0.25
            ref = s.read(x - 16 * f, y - 16 * f, (32, 32), 0.75)
            assert np.abs(ref.astype(int) - c.images[0].astype(int)).mean() < 4


def _grid(n: int, size: int) -> np.ndarray:
    return np.array([[x, y, x + size, y + size] for y in range(0, n * size, size)
                     for x in range(0, n * size, size)])  # fmt: skip


def test_blocks_give_every_cell_to_one_tile_and_threads_change_nothing(synthetic_slide):
    """Tiles read together as blocks: each detected centre lands in exactly one tile (the one
    whose box holds it), tile by tile as when each tile is read alone, and two threads give
    the same cells in the same order as one."""
    from cytofm.cells.detect import make_detector
    from cytofm.config import CellsConfig

    path, _canvas = synthetic_slide
    cfg = CellsConfig()
    boxes = _grid(4, 512)
    with open_slide(path) as s:
        det = make_detector(cfg, np.array([250.0, 250.0, 250.0]))

        def run(**kw):
            return list(iter_tile_cells(s, boxes, cfg.patch_px, cfg.patch_mpp, det, **kw))

        alone, blocks, threaded = run(block_px=1), run(block_px=1024), run(threads=2)
    assert [c.tile_index for c in blocks] == list(range(len(boxes)))  # one 4x4 block
    for a, b in zip(blocks, threaded, strict=True):
        assert a.tile_index == b.tile_index
        assert np.array_equal(a.coords, b.coords) and np.array_equal(a.images, b.images)
    for c in blocks:
        x0, y0, x1, y1 = boxes[c.tile_index]
        assert ((c.coords >= [x0, y0]) & (c.coords < [x1, y1])).all()
    all_xy = np.concatenate([c.coords for c in blocks])
    assert len(np.unique(all_xy, axis=0)) == len(all_xy) > 20

    # cells away from tile borders are found whether or not tiles share a read (the sampling
    # grid starts elsewhere, so centres move by under a detector pixel: 1 um = 4 px here)
    def interior(cells):
        xy = np.concatenate([c.coords for c in cells])
        rel = xy % 512
        return xy[((rel > 60) & (rel < 452)).all(1)]

    a, b = interior(alone), interior(blocks)
    gap = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    assert len(a) > 10 and abs(len(a) - len(b)) <= 0.05 * len(a)
    assert (gap.min(1) <= 4).mean() >= 0.95 and (gap.min(0) <= 4).mean() >= 0.95
    assert sum(c.pixels_read for c in blocks) < sum(c.pixels_read for c in alone)
