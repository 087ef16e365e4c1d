"""The foreground mask must keep sparse cytology: isolated cells and pale cytoplasm."""

import numpy as np
import pytest
from tiatoolbox.tools.tissuemask import MorphologicalMasker, OtsuTissueMasker

from cytofm.wsi.mask import estimate_background, foreground_mask, optical_density, read_thumbnail
from cytofm.wsi.reader import open_slide

MASK_MPP = 4.0


def _cell_coverage(mask, cells, slide_mpp):
    """Per cell: is its nucleus inside, and what fraction of its cytoplasm disk is inside."""
    f = slide_mpp / MASK_MPP
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    centre_in, area_in = [], []
    for x, y, r in cells[["x", "y", "radius_um"]].to_numpy():
        cx, cy, rr = x * f, y * f, 0.8 * r / MASK_MPP
        disk = (xx - cx) ** 2 + (yy - cy) ** 2 <= rr**2
        centre_in.append(mask[int(cy), int(cx)])
        area_in.append(mask[disk].mean() if disk.any() else 1.0)
    return np.array(centre_in), np.array(area_in)


@pytest.fixture(scope="module")
def thumb(synthetic_slide):
    path, canvas = synthetic_slide
    with open_slide(path) as s:
        return read_thumbnail(s, MASK_MPP), canvas


def test_background_is_glass_colour(thumb):
    img, _canvas = thumb
    bg = estimate_background(img)
    assert (bg > 235).all()
    od = optical_density(img, bg)
    assert np.median(od) < 0.02  # most of a sparse slide is glass


def test_mask_keeps_every_cell_and_its_cytoplasm(thumb):
    img, canvas = thumb
    mask = foreground_mask(img, MASK_MPP, estimate_background(img))
    centre_in, area_in = _cell_coverage(mask, canvas.cells, canvas.mpp)
    assert centre_in.all(), "an isolated cell was dropped"
    assert np.median(area_in) > 0.95 and area_in.min() > 0.8
    assert mask.mean() < 0.5  # and it is not simply everything


def test_tissue_maskers_tuned_for_he_lose_cytology(thumb):
    """Why cytofm has its own mask: tiatoolbox's H&E maskers drop cells or cytoplasm here."""
    img, canvas = thumb
    morph = MorphologicalMasker(mpp=MASK_MPP).fit_transform([img])[0]
    otsu = OtsuTissueMasker().fit_transform([img])[0]
    ours = foreground_mask(img, MASK_MPP, estimate_background(img))
    c_morph, _ = _cell_coverage(morph, canvas.cells, canvas.mpp)
    _, a_otsu = _cell_coverage(otsu, canvas.cells, canvas.mpp)
    _, a_ours = _cell_coverage(ours, canvas.cells, canvas.mpp)
    assert c_morph.mean() < 1.0  # isolated cells removed as "small objects"
    # Otsu leaves out pale cytoplasm of some cells; ours keeps at least 80% of every cell
    assert a_otsu.min() < 0.8 <= a_ours.min()
    assert a_otsu.mean() < a_ours.mean()


def test_isolated_pale_cell_on_empty_glass_is_kept():
    """One faint 20 um cell on a 1 mm field: the smallest, palest thing a smear holds."""
    img = np.full((250, 250, 3), 246, np.uint8)
    yy, xx = np.mgrid[:250, :250]
    cell = (xx - 60) ** 2 + (yy - 180) ** 2 <= 3**2  # 12 um radius at 4 um/px
    img[cell] = (222, 232, 236)  # pale cyanophilic cytoplasm, OD ~0.08 in red
    img[(xx - 60) ** 2 + (yy - 180) ** 2 <= 1] = (120, 110, 160)
    mask = foreground_mask(img, MASK_MPP, estimate_background(img))
    assert mask[180, 60] and mask[183, 60]
    assert not mask[20, 200]


def test_dust_smaller_than_min_object_is_dropped():
    img = np.full((100, 100, 3), 245, np.uint8)
    img[50, 50] = (90, 90, 90)  # one 16 um2 speck
    mask = foreground_mask(img, MASK_MPP, estimate_background(img), min_object_um2=40)
    assert not mask.any()
