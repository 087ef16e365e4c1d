import numpy as np
import pytest
import tifffile

from cytofm.errors import InputDataError, MissingResolutionError
from cytofm.wsi.reader import open_slide


def test_mpp_from_metadata_and_override(synthetic_slide):
    path, _ = synthetic_slide
    with open_slide(path, "s1") as s:
        assert s.mpp == pytest.approx(0.25) and s.mpp_source == "metadata"
        assert len(s.level_downsamples) >= 3
    with open_slide(path, "s1", mpp=0.3) as s:
        assert s.mpp == 0.3 and s.mpp_source == "sample_sheet"


def test_missing_mpp_names_slide_and_column(tmp_path):
    path = tmp_path / "nores.tif"
    tifffile.imwrite(path, np.full((600, 600, 3), 230, np.uint8), tile=(256, 256))
    with pytest.raises(MissingResolutionError, match=r"slide 'case7'.*'mpp' column"):
        open_slide(path, "case7")
    with open_slide(path, "case7", mpp=0.5) as s:
        assert s.mpp == 0.5


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputDataError, match=r"file not found: .*nope\.svs.*'path' column"):
        open_slide(tmp_path / "nope.svs", "x")
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(InputDataError, match="bad"):
        open_slide(bad, "bad")


def test_implausible_override_is_refused(synthetic_slide):
    with pytest.raises(InputDataError, match="not a plausible"):
        open_slide(synthetic_slide[0], "s", mpp=250.0)


def test_read_resamples_to_requested_mpp(synthetic_slide):
    path, canvas = synthetic_slide
    with open_slide(path) as s:
        assert s.best_level(2.0) == 1 and s.best_level(1.9) == 0 and s.best_level(100) >= 2
        full = s.read(512, 512, (512, 512), 0.25)  # level 0, 512x512
        half = s.read(512, 512, (256, 256), 0.5)  # same field of view at level 1
    assert full.shape == (512, 512, 3) and half.shape == (256, 256, 3)
    ref = canvas.rgb[512:1024, 512:1024].astype(float)
    assert np.abs(full.astype(float) - ref).mean() < 3  # JPEG error only
    down = ref.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert np.abs(half.astype(float) - down).mean() < 4


def test_outside_the_slide_is_white(synthetic_slide):
    with open_slide(synthetic_slide[0]) as s:
        region = s.read(-200, -200, (100, 100), 0.5)
    assert (region[:50, :50] == 255).all()


def test_tiatoolbox_backend_reads_the_same_pixels(synthetic_slide):
    path, _ = synthetic_slide
    with open_slide(path, backend="openslide") as a, open_slide(path, backend="tiatoolbox") as b:
        assert b.mpp == pytest.approx(a.mpp)
        ra, rb = a.read(300, 400, (128, 128), 0.5), b.read(300, 400, (128, 128), 0.5)
    assert np.abs(ra.astype(int) - rb.astype(int)).mean() < 2


def test_plain_image_fields_open_without_tiatoolbox_and_read_the_same_pixels(tmp_path):
    """A microscope field (JPEG/PNG) opens with the `image` backend under `auto`: decoded by
    OpenCV as tiatoolbox's virtual reader does, so every read is pixel-identical to it."""
    import cv2

    from cytofm.errors import InputDataError, MissingResolutionError
    from cytofm.wsi.reader import open_slide

    rng = np.random.default_rng(0)
    field = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (0, 0), 2)
    for name in ("f.jpg", "f.png"):
        path = tmp_path / name
        cv2.imwrite(str(path), field)
        with open_slide(path, "f", 0.07) as a, open_slide(path, "f", 0.07, "tiatoolbox") as b:
            assert a.backend == "image" and a.dimensions == b.dimensions == (320, 240)
            assert a.mpp == 0.07 and a.mpp_source == "sample_sheet"
            for args in (
                (0, 0, (320, 240), 0.07),
                (-20, 13.5, (90, 70), 0.25),
                (100, 50, (40, 40), 0.05),
            ):
                assert np.array_equal(a.read(*args), b.read(*args)), (name, args)
    with pytest.raises(MissingResolutionError, match="'mpp' column"):
        open_slide(tmp_path / "f.jpg", "f")
    broken = tmp_path / "cut.jpg"
    broken.write_bytes((tmp_path / "f.jpg").read_bytes()[:300])
    with pytest.raises(InputDataError, match="cut.jpg"):
        open_slide(broken, "cut", 0.07).read(0, 0, (320, 240), 0.07)


def test_macenko_vectors_equal_tiatoolbox(tmp_path):
    """The stain vectors cytofm estimates are tiatoolbox's MacenkoExtractor's, to the bit."""
    from tiatoolbox.tools.stainextract import MacenkoExtractor

    from cytofm.cells.stain import estimate_stain_vectors
    from tests import corpus as C

    rng = np.random.default_rng(1)
    samples = [C.smear(size=256, seed=s) for s in range(3)]
    samples.append(rng.integers(40, 250, (64, 64, 3), dtype=np.uint8))
    for rgb in samples:
        ours = estimate_stain_vectors(rgb)
        assert np.array_equal(ours, MacenkoExtractor().get_stain_matrix(rgb.copy()))


def test_best_level_takes_a_level_a_hair_coarser_than_asked(synthetic_slide):
    """An odd-sized pyramid's levels are a hair coarser than powers of two (12500 px halved
    four times: 781 px, downsample 16.005): asked for 16, the slide reads that level rather
    than one with four times the pixels; a level 5% too coarse is still passed over."""
    with open_slide(synthetic_slide[0]) as s:
        s.level_downsamples = [1.0, 2.0, 4.0, 8.0026, 16.005]
        assert s.best_level(16.0) == 4 and s.best_level(8.0) == 3
        assert s.best_level(15.2) == 3 and s.best_level(3.9) == 1
