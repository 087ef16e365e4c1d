from pathlib import Path

import cv2
import numpy as np
import openslide
import pandas as pd
import pytest

from cytofm.config import DemoConfig
from cytofm.synthetic.demo import (
    demo_slide_labels,
    make_demo_crops,
    make_demo_sheet,
    make_demo_slide,
    render_crop,
)
from cytofm.synthetic.morphology import CELL_CLASSES, sample_cell
from cytofm.synthetic.slide import od_to_rgb, write_pyramidal_tiff
from cytofm.synthetic.stain import SlideStain

TINY = DemoConfig(n_slides=4, pretrain_slides=2, width_px=1024, height_px=1024, crops_per_class=3)


def test_pyramidal_tiff_opens_in_openslide_with_mpp(tmp_path):
    canvas = np.full((1500, 1300, 3), 240, np.uint8)
    path = tmp_path / "s.tif"
    dims = write_pyramidal_tiff(path, canvas, 0.25)
    with openslide.OpenSlide(path) as s:
        assert s.properties["openslide.vendor"] == "generic-tiff"
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert s.level_count == len(dims) >= 2
        assert s.dimensions == (1300, 1500)
        assert s.level_downsamples[1] == pytest.approx(2.0, rel=0.01)


def test_periodic_tiff_is_larger_than_its_canvas(tmp_path):
    canvas = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    path = tmp_path / "big.tif"
    write_pyramidal_tiff(path, canvas, 0.5, shape=(1024, 768), quality=100)
    with openslide.OpenSlide(path) as s:
        assert s.dimensions == (768, 1024)
        a = np.asarray(s.read_region((0, 0), 0, (64, 64)))[..., :3].astype(int)
        b = np.asarray(s.read_region((256, 512), 0, (64, 64)))[..., :3].astype(int)
    assert np.abs(a - b).mean() < 3  # the same canvas tile repeated (JPEG noise aside)


def test_demo_slide_is_deterministic_and_has_ground_truth(tmp_path):
    make_demo_slide(TINY, "demo_001", tmp_path / "a.tif", tmp_path / "a.tsv")
    make_demo_slide(TINY, "demo_001", tmp_path / "b.tif", tmp_path / "b.tsv")
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    truth = pd.read_csv(tmp_path / "a.tsv", sep="\t")
    assert len(truth) > 5
    assert set(truth.columns) >= {"slide_id", "x", "y", "class"}
    assert truth["x"].between(0, 1024).all() and truth["y"].between(0, 1024).all()


def test_abnormal_slides_and_only_they_hold_dysplastic_cells(tmp_path):
    labels = demo_slide_labels(TINY)
    assert sorted(labels.values()) == [0, 0, 1, 1]
    for sid, abnormal in labels.items():
        make_demo_slide(TINY, sid, tmp_path / f"{sid}.tif", tmp_path / f"{sid}.tsv")
        classes = set(pd.read_csv(tmp_path / f"{sid}.tsv", sep="\t")["class"])
        assert ("dysplastic" in classes) == bool(abnormal), (sid, classes)


def test_sheet_columns_and_splits():
    sheet = make_demo_sheet(DemoConfig(n_slides=10, pretrain_slides=4), "slides")
    assert list(sheet.columns[:5]) == ["slide_id", "path", "mpp", "patient_id", "split"]
    # pretraining slides: split train, unlabelled; the cohort: split test, labelled, balanced
    assert sheet["split"].tolist() == ["train"] * 4 + ["test"] * 6
    assert (sheet["abnormal"].iloc[:4] == "").all()
    assert sorted(sheet["abnormal"].iloc[4:]) == [0, 0, 0, 1, 1, 1]
    pre, cohort = set(sheet["patient_id"].iloc[:4]), set(sheet["patient_id"].iloc[4:])
    assert not pre & cohort and len(cohort) == 3
    assert (sheet["mpp"] == "").all()
    assert sheet["cell_truth"].iloc[3] == str(Path("ground_truth") / "demo_003.tsv")


def _nuclear_area(crop: np.ndarray) -> float:
    """Pixels much darker than the crop's glass, a rough nuclear area."""
    grey = crop.astype(float).min(axis=2)
    centre = grey[48:144, 48:144]
    return float((centre < 0.55 * np.percentile(grey, 95)).sum())


def test_classes_differ_in_nuclear_size_not_in_stain():
    rng = np.random.default_rng(0)
    areas = {c: [] for c in CELL_CLASSES}
    for cls in CELL_CLASSES:
        for _ in range(12):
            crop = render_crop(cls, 48, 0.25, SlideStain.sample(rng), rng)
            assert crop.shape == (192, 192, 3)
            areas[cls].append(_nuclear_area(crop))
    med = {c: np.median(v) for c, v in areas.items()}
    assert med["squamous"] < med["lymphocyte"] < med["koilocyte"]
    assert med["squamous"] < med["dysplastic"]
    # cytoplasm colour is drawn independently of the class
    mixes = {c: np.mean([sample_cell(c, rng).cyto_mix for _ in range(300)]) for c in CELL_CLASSES}
    assert max(mixes.values()) - min(mixes.values()) < 0.1


def test_contour_irregularity_marks_dysplasia():
    rng = np.random.default_rng(1)
    amp = {
        c: np.mean(
            [np.abs(sample_cell(c, rng).nuclei[0].harmonics[:, 1]).sum() for _ in range(100)]
        )
        for c in CELL_CLASSES
    }
    assert amp["dysplastic"] > 2 * max(amp[c] for c in CELL_CLASSES if c != "dysplastic")


def test_crops_folder_layout_and_groups(tmp_path):
    table = make_demo_crops(TINY, tmp_path, group_size=5)
    assert len(table) == 3 * len(CELL_CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(CELL_CLASSES)
    assert (tmp_path / "labels.csv").is_file()
    assert table["group"].nunique() == 3  # 12 crops in groups of 5


def test_od_to_rgb_in_bands_is_the_whole_image_at_once():
    """Bands of rows draw the same noise sequence as one draw for the whole image."""
    stain = SlideStain.sample(np.random.default_rng(1))
    od = np.random.default_rng(2).uniform(0, 1.5, (70, 33, 3)).astype(np.float32)
    blurred = cv2.GaussianBlur(od, (0, 0), stain.blur_px) if stain.blur_px > 0 else od
    rgb = 255.0 * np.exp(-blurred)
    rgb += np.random.default_rng(3).normal(0.0, 1.5, size=rgb.shape).astype(np.float32)
    whole = np.clip(rgb, 0, 255).astype(np.uint8)
    for band in (1, 16, 70, 256):
        got = od_to_rgb(od, stain, np.random.default_rng(3), band=band)
        np.testing.assert_array_equal(got, whole)
