import numpy as np

from cytofm.cells.extract import crop_patches, iter_tile_cells
from cytofm.wsi.reader import open_slide


def test_crop_patches_centres():
    img = np.arange(20 * 20 * 3, dtype=np.uint8).reshape(20, 20, 3)
    out = crop_patches(img, np.array([[10.2, 9.6]]), 4)
    assert (out[0] == img[8:12, 8:12]).all()


def test_patches_are_centred_on_their_coordinates(synthetic_slide):
    """A stored patch equals the slide read around its stored centre at the patch mpp."""
    path, _canvas = synthetic_slide

    def detector(rgb, mpp):  # a fixed point in each padded region
        return np.array([[40.0, 52.0]]), np.array([1.0], np.float32)

    with open_slide(path) as s:
        boxes = np.array([[0, 0, 512, 512], [512, 512, 1024, 1024]])
        cells = list(iter_tile_cells(s, boxes, patch_px=32, patch_mpp=0.75, detector=detector))
        for c in cells:
            assert len(c.images) == 1
            x, y = c.coords[0]
            f = 0.75 / 0.25
            ref = s.read(x - 16 * f, y - 16 * f, (32, 32), 0.75)
            assert np.abs(ref.astype(int) - c.images[0].astype(int)).mean() < 4
