"""The morphometry control: nucleus and cell measurements in micrometres, as a backbone."""

import numpy as np
import pytest

from cytofm.config import BackboneSpec
from cytofm.eval.backbones import load_backbone_spec
from cytofm.eval.features import embed_array
from cytofm.eval.morphometry import FEATURES, measure_patch


def _cell(nucleus=(6, 6), cell_r=20, size=64, nucleus_rgb=(70, 40, 120)):
    """A pink cell with a dark purple (elliptic) nucleus at the centre, on white glass."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    img = np.full((size, size, 3), 245, np.uint8)
    img[xx**2 + yy**2 <= cell_r**2] = (225, 160, 200)
    a, b = nucleus
    img[(xx / a) ** 2 + (yy / b) ** 2 <= 1] = nucleus_rgb
    return img


def _f(values, name):
    return values[FEATURES.index(name)]


def test_a_round_nucleus_is_measured_in_micrometres():
    f = measure_patch(_cell(), mpp=0.5)
    assert _f(f, "nucleus_found") == 1
    assert _f(f, "nucleus_area_um2") == pytest.approx(np.pi * 36 * 0.25, rel=0.15)
    assert _f(f, "cell_area_um2") == pytest.approx(np.pi * 400 * 0.25, rel=0.1)
    assert _f(f, "nucleus_perimeter_um") == pytest.approx(2 * np.pi * 6 * 0.5, rel=0.2)
    assert _f(f, "nucleus_eccentricity") < 0.4 and _f(f, "nucleus_solidity") > 0.9
    assert _f(f, "nucleus_to_cell_ratio") == pytest.approx(36 / 400, rel=0.2)
    # the nucleus takes up more haematoxylin than the cytoplasm
    assert _f(f, "nucleus_haematoxylin") > _f(f, "cytoplasm_haematoxylin")
    # the same patch at twice the um/px: four times the areas, twice the perimeter
    g = measure_patch(_cell(), mpp=1.0)
    assert _f(g, "nucleus_area_um2") == pytest.approx(4 * _f(f, "nucleus_area_um2"))
    assert _f(g, "nucleus_perimeter_um") == pytest.approx(2 * _f(f, "nucleus_perimeter_um"))


def test_shape_size_and_darkness_tell_cells_apart():
    small, large = measure_patch(_cell((5, 5))), measure_patch(_cell((10, 10)))
    assert _f(large, "nucleus_area_um2") > 3 * _f(small, "nucleus_area_um2")
    oval = measure_patch(_cell((10, 4)))
    assert _f(oval, "nucleus_eccentricity") > 0.85
    pale = measure_patch(_cell(nucleus_rgb=(150, 110, 180)))
    assert _f(pale, "nucleus_darkness") < _f(measure_patch(_cell()), "nucleus_darkness")


def test_blank_glass_has_no_nucleus():
    f = measure_patch(np.full((32, 32, 3), 245, np.uint8))
    assert f.tolist() == [0.0] * len(FEATURES)


def test_the_backbone_kind_embeds_patches_at_their_own_size_and_scale():
    bb = load_backbone_spec(BackboneSpec("morph", "morphometry"))
    assert bb.model.num_features == len(FEATURES) and bb.input_size == 0
    assert bb.identity["architecture"] == "morphometry" and bb.identity["n_params"] == 0
    patches = np.stack([_cell(), _cell((10, 4)), np.full((64, 64, 3), 245, np.uint8)])
    bb.model.set_mpp(0.5)
    feats = embed_array(bb, patches, batch_size=2)
    assert feats.shape == (3, len(FEATURES))
    want = np.stack([measure_patch(p, 0.5) for p in patches])
    np.testing.assert_allclose(feats, want, rtol=1e-5, atol=1e-6)


def test_lora_is_not_planned_on_measurements(tmp_path):
    from cytofm.config import EvalConfig, TaskConfig
    from cytofm.errors import ConfigError
    from cytofm.stages.evaluate import run_evaluate

    with pytest.raises(ConfigError, match="no network for protocol 'lora'"):
        run_evaluate(
            TaskConfig(name="t", dataset="d", protocols=("linear", "lora")),
            EvalConfig(),
            "lora",
            BackboneSpec("morph", "morphometry"),
            tmp_path / "none.zarr",
            tmp_path / "x.json",
        )
