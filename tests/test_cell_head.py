"""A cell task's final linear head: the evaluation's choice of C refitted for use, saved
without pickles, and applied to the cells of slides the slide model predicts."""

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cytofm.config import EvalConfig, TaskConfig
from cytofm.errors import InputDataError
from cytofm.eval.cell_head import CellHead, load_cell_head
from cytofm.eval.linear import fit_linear, full_proba
from cytofm.eval.tasks import load_task_data, task_split
from cytofm.stages.cell_head import run_cell_head
from cytofm.stages.predict import run_predict, run_predict_table
from cytofm.store import atomic_group, open_store
from tests.test_predict import trained  # noqa: F401  the toy slide task's MIL job


@pytest.mark.parametrize("classes_fitted", [[0, 1], [0, 1, 2], [0, 2]])
def test_head_gives_sklearns_probabilities(classes_fitted):
    """Binary, multiclass, and a class absent from training (its column stays 0)."""
    rng = np.random.default_rng(1)
    y = np.repeat(classes_fitted, 20)
    x = rng.normal(size=(len(y), 5)) + y[:, None]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=500)).fit(x, y)
    head = CellHead.from_sklearn(clf, n_classes=3)
    test = rng.normal(size=(7, 5)) * 2
    assert np.allclose(head.predict_proba(test), full_proba(clf, test, 3), atol=1e-10)


def _cell_task(tmp, n=120):
    """A labelled cell collection whose features carry the toy slides' abnormal signal, with
    the toy feature stores' backbone identity and patch geometry."""
    rng = np.random.default_rng(3)
    signal = np.random.default_rng(0).normal(size=8) * 2.5  # _toy_cohort's abnormal shift
    labels = np.arange(n) % 2  # 1 = dysplastic
    feats = rng.normal(size=(n, 8)).astype(np.float32) + labels[:, None] * signal
    with atomic_group(tmp / "cells_ds.zarr") as g:
        g.create_array("labels", data=labels.astype(np.int64))
        g.create_array("groups", data=np.asarray([f"p{i // 4}" for i in range(n)]))
        g.attrs.update({"classes": ["squamous", "dysplastic"], "patch_um": 24.0, "patch_px": 8})
    with atomic_group(tmp / "cells_ds_features.zarr") as g:
        g.create_array("features", data=feats.astype(np.float16))
        g.attrs.update(
            {"backbone": "toy", "dim": 8, "provenance": {"backbone": {"architecture": "toy",
             "weights_sha256": "abc"}, "preprocessing": {"mean": [0.5]}}}
        )  # fmt: skip
    task = TaskConfig(name="toy_cells", dataset="cells_ds")
    return task, tmp / "cells_ds.zarr", tmp / "cells_ds_features.zarr"


def test_head_is_refitted_on_train_and_val_with_the_validation_choice(tmp_path):
    task, ds, fs = _cell_task(tmp_path)
    cfg = EvalConfig()
    card = run_cell_head(task, cfg, "toy", ds, fs, tmp_path / "head")
    head, saved = load_cell_head(tmp_path / "head")
    assert (
        saved == json.loads((tmp_path / "head" / "head.json").read_text())
        and card["C"] == saved["C"]
    )
    data = load_task_data(task, ds)
    split = task_split(task, data)
    x = np.asarray(open_store(fs)["features"][:], np.float32)
    y = data["labels"]
    _, C, _ = fit_linear(x[split.train], y[split.train], x[split.val], y[split.val],
                         Cs=list(cfg.linear.Cs), class_names=data["classes"])  # fmt: skip
    assert saved["C"] == C and saved["training"]["n_rows"] == len(split.train) + len(split.val)
    rows = np.concatenate([split.train, split.val])
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000)).fit(
        x[rows], y[rows]
    )
    assert np.allclose(head.predict_proba(x), ref.predict_proba(x), atol=1e-8)
    assert saved["test_of_evaluated_model"]["balanced_accuracy"] > 0.9  # the signal is strong
    assert saved["features"]["weights_sha256"] == "abc" and saved["classes"] == [
        "squamous",
        "dysplastic",
    ]
    with open(tmp_path / "head" / "head.safetensors", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(InputDataError, match="checksum"):
        load_cell_head(tmp_path / "head")


def test_predicted_slides_get_each_cells_classes(trained, tmp_path):  # noqa: F811
    """With the cell task's head, each cell of a predicted slide gets class probabilities; the
    slides holding abnormal cells show them, and the slide model's attention is drawn to
    them more than their share of cells."""
    tmp, cohort, _ = trained
    task, ds, fs = _cell_task(tmp_path)
    run_cell_head(task, EvalConfig(), "toy", ds, fs, tmp_path / "head")
    outs = {}
    for row in cohort[20:]:
        s = row["slide_id"]
        outs[s] = run_predict(
            tmp / "abmil" / "model", s, row["features"], row["instances"],
            *(tmp_path / f"{s}.{e}" for e in ("json", "npz", "png")),
            cell_head_dir=tmp_path / "head",
        )["cells"]  # fmt: skip
        saved = np.load(tmp_path / f"{s}.npz")
        assert saved["cell_proba"].shape == (len(saved["rows"]), 2)
        assert list(saved["cell_classes"]) == ["squamous", "dysplastic"]
        assert np.allclose(saved["cell_proba"].sum(1), 1, atol=1e-5)
    for s in ("s21", "s23"):  # 3 of 60 cells abnormal
        assert outs[s]["fraction"]["dysplastic"] == pytest.approx(3 / 60, abs=0.03)
        assert outs[s]["attention_weighted"]["dysplastic"] > 2 * outs[s]["fraction"]["dysplastic"]
    for s in ("s20", "s22"):
        assert outs[s]["fraction"]["dysplastic"] < 0.03
    run_predict_table([tmp_path / f"{s}.json" for s in outs], tmp_path / "t.csv")
    import pandas as pd

    table = pd.read_csv(tmp_path / "t.csv")
    assert {"cells_dysplastic", "attention_dysplastic", "cells_squamous"} <= set(table.columns)


def test_a_head_of_other_features_is_refused(trained, tmp_path):  # noqa: F811
    tmp, cohort, _ = trained
    task, ds, fs = _cell_task(tmp_path)
    import zarr

    zarr.open_group(ds, mode="a").attrs["patch_um"] = 48.0  # cells of another size
    run_cell_head(task, EvalConfig(), "toy", ds, fs, tmp_path / "head")
    row = cohort[21]
    with pytest.raises(InputDataError, match=r"patch_um: model 48.0, features 24.0"):
        run_predict(tmp / "abmil" / "model", "s21", row["features"], row["instances"],
                    *(tmp_path / f"x.{e}" for e in ("json", "npz", "png")),
                    cell_head_dir=tmp_path / "head")  # fmt: skip
