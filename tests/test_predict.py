import json

import numpy as np
import pandas as pd
import pytest
import zarr

from cytofm.config import SlideTaskConfig
from cytofm.errors import InputDataError
from cytofm.eval.mil_model import final_epochs, load_mil_model, predict_bag
from cytofm.stages.mil import run_mil
from cytofm.stages.predict import run_predict, run_predict_table
from cytofm.store import atomic_group, open_store
from tests.test_mil import _toy_cohort, _toy_eval_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A slide task's MIL job on 20 labelled toy slides; 4 more slides kept back unlabelled."""
    tmp = tmp_path_factory.mktemp("predict")
    cohort = _toy_cohort(tmp, n_slides=24)
    for row in cohort:  # the feature stores say which backbone made them, as embed's do
        g = zarr.open_group(row["features"], mode="a")
        g.attrs.update(
            {"backbone": "toy", "dim": 8, "provenance": {"backbone": {"architecture": "toy",
             "weights_sha256": "abc"}, "preprocessing": {"mean": [0.5]}}}
        )  # fmt: skip
        g = zarr.open_group(row["instances"], mode="a")
        g.attrs.update({"patch_um": 24.0, "patch_px": 8})
    task = SlideTaskConfig(name="toy", label="abnormal", folds=3, seeds=(0, 1))
    res = run_mil(task, _toy_eval_config(), "toy", cohort[:20], tmp / "r.json", tmp / "abmil")
    return tmp, cohort, res


def test_final_model_is_trained_on_every_labelled_slide_as_the_folds_chose(trained):
    tmp, cohort, _ = trained
    models, card = load_mil_model(tmp / "abmil" / "model")
    saved = json.loads((tmp / "r.json").read_text())
    assert len(models) == card["n_models"] == 2  # one per seed
    assert card["training"]["slides"] == [r["slide_id"] for r in cohort[:20]]
    assert card["training"]["epochs"] == final_epochs(saved["folds"], 60)
    assert card["classes"] == ["0", "1"] and card["backbone"] == "toy"
    assert card["features"]["weights_sha256"] == "abc" and card["features"]["patch_um"] == 24.0
    auroc = card["cross_validation"]["auroc"]
    assert auroc["mean"] == saved["results"][0]["summary"]["auroc"]["mean"]
    # loading again gives the same model
    again, _ = load_mil_model(tmp / "abmil" / "model")
    bag = np.asarray(open_store(cohort[0]["features"])["features"][:], np.float32)
    assert np.allclose(predict_bag(models, bag)[0], predict_bag(again, bag)[0])


def test_unlabelled_slides_get_probabilities_attention_and_a_table(trained, tmp_path):
    tmp, cohort, _ = trained
    outs = []
    for row in cohort[20:]:
        s = row["slide_id"]
        res = run_predict(
            tmp / "abmil" / "model", s, row["features"], row["instances"],
            tmp_path / f"{s}.json", tmp_path / f"{s}.npz", tmp_path / f"{s}.png",
        )  # fmt: skip
        outs.append(tmp_path / f"{s}.json")
        assert sum(res["probabilities"].values()) == pytest.approx(1.0)
        saved = np.load(tmp_path / f"{s}.npz")
        assert saved["attention"].sum() == pytest.approx(1.0, abs=1e-4)
        coords = np.asarray(open_store(row["instances"])["coords"][:])
        assert np.array_equal(saved["coords"], coords[saved["rows"]])
        assert (tmp_path / f"{s}.png").stat().st_size > 500
    p = {json.loads(o.read_text())["slide_id"]: json.loads(o.read_text()) for o in outs}
    # odd slides hold the abnormal cells: the model ranks them above the even ones
    assert min(p[s]["probabilities"]["1"] for s in ("s21", "s23")) > max(
        p[s]["probabilities"]["1"] for s in ("s20", "s22")
    )
    assert run_predict_table(outs, tmp_path / "table.csv") == 4
    table = pd.read_csv(tmp_path / "table.csv")
    assert list(table["slide_id"]) == ["s20", "s21", "s22", "s23"]
    assert {"predicted", "p_0", "p_1", "model_sha256"} <= set(table.columns)


def _feature_store(path, features, rows, attrs):
    """A feature store of the given rows and attributes (as embed writes one)."""
    with atomic_group(path) as g:
        g.create_array("features", data=np.asarray(features))
        g.create_array("rows", data=np.asarray(rows))
        g.attrs.update(attrs)
    return path


def test_features_of_another_backbone_are_refused_naming_both(trained, tmp_path):
    tmp, cohort, _ = trained
    row = cohort[21]
    src = open_store(row["features"])
    prov = {"backbone": {"architecture": "toy", "weights_sha256": "xyz"},
            "preprocessing": {"mean": [0.5]}}  # fmt: skip
    other = _feature_store(tmp_path / "other.zarr", src["features"][:], src["rows"][:],
                           {**dict(src.attrs), "provenance": prov})  # fmt: skip
    with pytest.raises(InputDataError, match=r"weights_sha256: model 'abc', features 'xyz'"):
        run_predict(tmp / "abmil" / "model", "s21", other, row["instances"],
                    *(tmp_path / n for n in ("a.json", "a.npz", "a.png")))  # fmt: skip


def test_changed_weights_are_refused(trained, tmp_path):
    import shutil

    tmp, _, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(tmp / "abmil" / "model", copy)
    with open(copy / "model.safetensors", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(InputDataError, match="checksum"):
        load_mil_model(copy)


def test_a_slide_without_cells_gets_no_prediction_and_a_warning(trained, tmp_path):
    tmp, cohort, _ = trained
    row = cohort[20]
    src = open_store(row["features"])
    empty = _feature_store(tmp_path / "empty.zarr", np.zeros((0, 8), np.float16),
                           np.zeros(0, np.int64), dict(src.attrs))  # fmt: skip
    res = run_predict(tmp / "abmil" / "model", "s20", empty, row["instances"],
                      *(tmp_path / n for n in ("e.json", "e.npz", "e.png")))  # fmt: skip
    assert res["predicted"] == "" and "no cells" in res["warning"]
    assert all(np.isnan(v) for v in res["probabilities"].values())
