"""Gated attention MIL: padding and order do not change a slide's prediction."""

import numpy as np
import pytest
import torch

from cytofm.errors import InputDataError
from cytofm.eval.mil import GatedABMIL, pad_bags


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GatedABMIL(in_dim=16, n_classes=2, hidden=32, attn_dim=8).eval()


def _bags(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "s1": rng.normal(size=(7, 16)),
        "s2": rng.normal(size=(3, 16)),
        "s3": rng.normal(size=(12, 16)),
    }


def test_padded_masked_bag_equals_the_bag_alone(model):
    bags = _bags()
    x, mask, ids = pad_bags(bags)
    assert x.shape == (3, 12, 16) and mask.sum(1).tolist() == [7, 3, 12]
    with torch.no_grad():
        logits, attn = model(x, mask)
        for i, sid in enumerate(ids):
            alone, a_alone = model(torch.as_tensor(bags[sid], dtype=torch.float32))
            assert torch.allclose(logits[i], alone[0], atol=1e-6)
            n = len(bags[sid])
            assert torch.allclose(attn[i, :n], a_alone[0], atol=1e-6)
            assert torch.all(attn[i, n:] == 0)  # padding gets no attention
            assert attn[i].sum() == pytest.approx(1.0, abs=1e-6)


def test_permuting_instances_does_not_change_the_prediction(model):
    bag = torch.as_tensor(_bags()["s3"], dtype=torch.float32)
    perm = torch.randperm(len(bag), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, att_a = model(bag)
        b, att_b = model(bag[perm])
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(att_a[0, perm], att_b[0], atol=1e-6)  # attention follows the cell


def test_empty_bag_names_the_slide():
    bags = {"good": np.ones((4, 16)), "case 17": np.zeros((0, 16))}
    with pytest.raises(InputDataError, match="slide 'case 17' has no instances"):
        pad_bags(bags)


def test_attention_finds_the_informative_instance():
    """Trained on bags where one rare instance type decides the label, attention ranks it first."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    signal = rng.normal(size=16) * 2

    def bag(positive):
        feats = rng.normal(size=(40, 16))
        if positive:
            feats[:2] += signal
        return feats

    labels = np.array([i % 2 for i in range(60)])
    x, mask, _ = pad_bags([(f"s{i}", bag(y)) for i, y in enumerate(labels)])
    model = GatedABMIL(16, 2, hidden=32, attn_dim=16, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    y = torch.as_tensor(labels)
    for _ in range(150):
        logits, _ = model(x, mask)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits, attn = model(x, mask)
    assert (logits.argmax(1) == y).float().mean() > 0.95
    top = attn[labels == 1].argmax(1)
    assert (top < 2).float().mean() > 0.9  # the signal cells (rows 0, 1) get the most attention


def test_training_is_deterministic_and_stops_early():
    from cytofm.config import MilConfig
    from cytofm.eval.mil import train_mil

    rng = np.random.default_rng(3)
    labels = np.array([i % 2 for i in range(24)])
    bags = [
        (f"s{i}", rng.normal(size=(int(rng.integers(5, 30)), 8)) + 0.3 * y)
        for i, y in enumerate(labels)
    ]
    feats = [f for _, f in bags]
    train, val = np.arange(16), np.arange(16, 24)
    mil = MilConfig().updated(dict(max_epochs=40, min_epochs=6, patience=3, lr=1e-2, batch_bags=4))
    a, ha = train_mil(feats, labels, train, val, 2, mil, seed=1)
    b, hb = train_mil(feats, labels, train, val, 2, mil, seed=1)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert ha == hb and ha["epochs"] < 40  # stopped early on the validation loss
    assert ha["best_epoch"] >= 5  # chosen from min_epochs on, the lowest loss there
    assert ha["val_loss"][ha["best_epoch"]] <= min(ha["val_loss"][5:]) + 1e-6
    # the standardisation comes from the training bags only
    train_feats = np.concatenate([feats[i] for i in train])
    assert np.allclose(a.feat_mean.numpy(), train_feats.mean(0), atol=1e-5)


def test_folds_never_split_a_patient():
    from cytofm.eval.mil import grouped_folds

    labels = np.array([0, 1] * 10)
    patients = np.repeat([f"p{i}" for i in range(10)], 2)  # two slides per patient
    folds = grouped_folds(labels, patients, n_folds=5, seed=0)
    assert len(folds) == 5
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen) == list(range(20))
    for train, test in folds:
        assert not set(patients[train]) & set(patients[test])
    with pytest.raises(InputDataError, match="10 patients for 12 folds"):
        grouped_folds(labels, patients, n_folds=12, seed=0)


def test_heatmap_and_montage_files(tmp_path):
    import cv2

    from cytofm.report.attention import attention_heatmap, top_cells_montage

    rng = np.random.default_rng(0)
    thumb = np.full((100, 150, 3), 240, np.uint8)
    coords = rng.uniform(0, 1500, size=(30, 2))
    attn = rng.dirichlet(np.ones(30))
    attention_heatmap(thumb, coords, attn, 10.0, tmp_path / "heat.png", "slide s1")
    assert (tmp_path / "heat.png").stat().st_size > 5000
    images = np.stack([np.full((16, 16, 3), i * 8, np.uint8) for i in range(30)])
    top = top_cells_montage(images, attn, 5, tmp_path / "top.png", cols=4)
    assert top.tolist() == np.argsort(-attn)[:5].tolist()
    montage = cv2.imread(str(tmp_path / "top.png"))
    assert montage.shape == (2 * 18, 4 * 18, 3)
    assert montage[1, 1, 0] == top[0] * 8  # the most attended cell comes first


def _toy_cohort(tmp_path, n_slides=20, n_cells=60, n_abnormal=3):
    """Slides of two per patient; positive slides hold a few 'abnormal' cells (a shifted
    feature and true class 'dysplastic' in a truth table at the cells' coordinates)."""
    import pandas as pd

    from cytofm.store import PatchStoreWriter, atomic_group

    rng = np.random.default_rng(0)
    signal = rng.normal(size=8) * 2.5
    cohort = []
    for i in range(n_slides):
        sid = f"s{i:02d}"
        feats = rng.normal(size=(n_cells, 8)).astype(np.float32)
        if i % 2:
            feats[:n_abnormal] += signal
        coords = np.stack([np.arange(n_cells) * 40 + 20, np.full(n_cells, 100)], 1)
        with atomic_group(tmp_path / "f" / f"{sid}.zarr") as g:
            g.create_array("features", shape=feats.shape, dtype="float16")[:] = feats
            g.create_array("rows", shape=(n_cells,), dtype="int64")[:] = np.arange(n_cells)
        with atomic_group(tmp_path / "c" / f"{sid}.zarr") as g:
            w = PatchStoreWriter(g, 8, 64, {"coords": (np.int64, (2,))})
            w.append(rng.integers(0, 255, (n_cells, 8, 8, 3), dtype=np.uint8), coords=coords)
            w.close()
            g.attrs["slide_mpp"] = 0.5
            g.attrs["provenance"] = {"slide_sha256": f"{i:064x}"}  # its slide file's checksum
        truth = pd.DataFrame(
            {
                "x": coords[:, 0] + 1.0,
                "y": coords[:, 1] - 1.0,
                "class": [
                    "dysplastic" if (i % 2 and j < n_abnormal) else "squamous"
                    for j in range(n_cells)
                ],
            }
        )
        truth.to_csv(tmp_path / f"{sid}.tsv", sep="\t", index=False)
        cohort.append(
            {
                "slide_id": sid,
                "label": i % 2,
                "group": f"p{i // 2}",
                "features": tmp_path / "f" / f"{sid}.zarr",
                "instances": tmp_path / "c" / f"{sid}.zarr",
                "truth": tmp_path / f"{sid}.tsv",
            }
        )
    return cohort


def _toy_eval_config():
    from cytofm.config import EvalConfig

    return EvalConfig().updated(
        {
            "bootstrap": 100,
            "mil.lr": 3e-3,
            "mil.max_epochs": 60,
            "mil.patience": 15,
            "mil.hidden": 32,
            "mil.attn_dim": 16,
            "mil.dropout": 0.0,
            "mil.top_k": 4,
        }
    )


def test_mil_stage_on_bags_with_a_few_abnormal_cells(tmp_path):
    """32 slides of 16 patients; positive slides hold 3 'abnormal' cells among 60."""
    import json

    from cytofm.config import SlideTaskConfig
    from cytofm.stages.mil import run_mil
    from cytofm.store import open_store

    cohort = _toy_cohort(tmp_path, n_slides=32)
    task = SlideTaskConfig(
        name="toy", label="abnormal", folds=4, seeds=(0, 1), truth_positive=("dysplastic",)
    )
    res = run_mil(
        task,
        _toy_eval_config(),
        "toy",
        cohort,
        tmp_path / "abmil.json",
        tmp_path / "abmil",
        tolerance_um=2.0,
    )
    saved = json.loads((tmp_path / "abmil.json").read_text())
    assert saved["protocol"] == "abmil" and saved["classes"] == ["0", "1"]
    assert saved["schema"]["version"] == 2 and saved["level"] == "slide"
    summary = saved["results"][0]["summary"]
    assert summary["auroc"]["mean"] > 0.9
    lo, hi = summary["auroc"]["ci95"]
    assert 0 < hi - lo < 0.3 and lo > 0.6, (lo, hi)  # informative: clear of chance, not flat
    groups = {r["slide_id"]: r["group"] for r in cohort}
    # out-of-fold: every slide predicted once per seed, folds never split a patient
    for seed in (0, 1):
        tested = [s for f in saved["folds"] if f["seed"] == seed for s in f["test_slides"]]
        assert sorted(tested) == res["slides"]
    for fold in saved["folds"]:
        train = {groups[s] for s in fold["train_slides"] + fold["val_slides"]}
        assert not train & {groups[s] for s in fold["test_slides"]}
    attn = open_store(tmp_path / "abmil" / "attention.zarr")
    assert attn["s01"]["attention"].shape == (2, 60)  # one row per seed
    truth = saved["attention_vs_truth"]
    assert truth["slides"] == [f"s{i:02d}" for i in range(1, 32, 2)]  # abnormal slides only
    assert truth["auroc"]["mean"] > 0.9  # attention lands on the abnormal cells
    assert truth["top_k_positive_rate"]["mean"] > 3 * truth["base_rate"]
    assert truth["per_slide"]["s01"][0]["n_matched"] == 60
    assert (tmp_path / "abmil" / "montage" / "s00.png").is_file()
    assert not (tmp_path / "abmil" / "heatmap").exists()  # no slide paths given


def test_attention_truth_scores_match_cells_and_rank():
    import pandas as pd

    from cytofm.stages.mil import attention_truth_scores

    coords = np.array([[10, 10], [50, 50], [90, 90], [300, 300]])  # the last is debris
    truth = pd.DataFrame({"x": [11, 49, 92], "y": [9, 51, 90], "class": ["a", "b", "b"]})
    s = attention_truth_scores(np.array([0.5, 0.3, 0.1, 0.1]), coords, truth, ["a"], 5.0, 1)
    assert (s["n_matched"], s["n_positive"]) == (3, 1)
    assert s["auroc"] == 1.0 and s["top_k_positive_rate"] == 1.0
    assert s["base_rate"] == pytest.approx(1 / 3)
    s = attention_truth_scores(np.array([0.1, 0.3, 0.5, 0.1]), coords, truth, ["a"], 5.0, 1)
    assert s["auroc"] == 0.0 and s["top_k_positive_rate"] == 0.0
    with pytest.raises(InputDataError, match="lacks column"):
        attention_truth_scores(np.ones(4), coords, truth.drop(columns="class"), ["a"], 5.0, 1)


def test_a_slide_without_cells_is_left_out_and_listed(tmp_path):
    """A slide where no cell was found has an empty bag: the cohort proceeds without it, and
    the result names it and why."""
    import json

    from cytofm.config import SlideTaskConfig
    from cytofm.stages.mil import run_mil
    from cytofm.store import PatchStoreWriter, atomic_group

    cohort = _toy_cohort(tmp_path, n_slides=8, n_cells=12)
    with atomic_group(tmp_path / "f" / "empty.zarr") as g:
        g.create_array("features", shape=(0, 8), dtype="float16")
        g.create_array("rows", shape=(0,), dtype="int64")
    with atomic_group(tmp_path / "c" / "empty.zarr") as g:
        PatchStoreWriter(g, 8, 64, {"coords": (np.int64, (2,))}).close()
    cohort.append(
        {"slide_id": "empty", "label": 1, "group": "p_empty",
         "features": tmp_path / "f" / "empty.zarr", "instances": tmp_path / "c" / "empty.zarr"}
    )  # fmt: skip
    cfg = _toy_eval_config().updated({"mil.max_epochs": 3, "mil.min_epochs": 1})
    task = SlideTaskConfig(name="toy", label="abnormal", folds=2, seeds=(0,))
    res = run_mil(task, cfg, "toy", cohort, tmp_path / "abmil.json", tmp_path / "abmil")
    saved = json.loads((tmp_path / "abmil.json").read_text())
    assert "empty" not in res["slides"] and len(saved["slides"]) == 8
    assert saved["left_out"] == [
        {"slide_id": "empty", "label": "1", "reason": "no cells (none found or kept)"}
    ]
    tested = sorted(s for f in saved["folds"] for s in f["test_slides"])
    assert tested == [f"s{i:02d}" for i in range(8)]


def test_a_cohort_slide_file_pretraining_read_is_refused_before_training(tmp_path):
    """The backbone's record holds the SHA-256 of two cohort slides' files (read under other
    slide ids): the MIL job refuses with their names; transductive runs are counted."""
    from cytofm.config import SlideTaskConfig
    from cytofm.errors import InputDataError
    from cytofm.inductive import write_content
    from cytofm.stages.mil import run_mil

    cohort = _toy_cohort(tmp_path, n_slides=8)
    bb = tmp_path / "backbone"
    bb.mkdir()
    read = [f"{3:064x}", f"{5:064x}", "f" * 64]
    write_content(bb, {"pixel_hash": np.zeros(0, np.uint64), "slide_sha256": read})
    task = SlideTaskConfig(name="toy", label="abnormal", folds=2, seeds=(0,))
    args = (
        task,
        _toy_eval_config().updated({"mil.max_epochs": 2, "mil.min_epochs": 1}),
        "ssl",
        cohort,
    )
    with pytest.raises(InputDataError, match=r"slide task 'toy'.*2 cohort slide\(s\) \(s03, s05"):
        run_mil(*args, tmp_path / "a.json", tmp_path / "a", backbone_kind="pretrained",
                exposure={"transductive": False}, pretrained_dir=bb)  # fmt: skip
    assert not (tmp_path / "a.json").exists()
    res = run_mil(*args, tmp_path / "b.json", tmp_path / "b", backbone_kind="pretrained",
                  exposure={"transductive": True}, pretrained_dir=bb)  # fmt: skip
    assert (
        res["exposure"]["content_checked"] and res["exposure"]["cohort_slides_pretrained_on"] == 2
    )
