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
    from cytofm.eval.mil import train_mil

    rng = np.random.default_rng(3)
    labels = np.array([i % 2 for i in range(24)])
    bags = [
        (f"s{i}", rng.normal(size=(int(rng.integers(5, 30)), 8)) + 0.3 * y)
        for i, y in enumerate(labels)
    ]
    x, mask, _ = pad_bags(bags)
    train, val = np.arange(16), np.arange(16, 24)
    a, ha = train_mil(x, mask, labels, train, val, 2, seed=1, max_epochs=40, patience=3, lr=1e-2)
    b, hb = train_mil(x, mask, labels, train, val, 2, seed=1, max_epochs=40, patience=3, lr=1e-2)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert ha == hb and ha["epochs"] < 40  # stopped early on the validation loss
    assert ha["val_loss"][ha["best_epoch"]] <= min(ha["val_loss"]) + 1e-6


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

    from cytofm.eval.mil_plots import attention_heatmap, top_cells_montage

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


def test_mil_stage_on_bags_with_a_few_abnormal_cells(tmp_path):
    """20 slides of 10 patients; positive slides hold 3 'abnormal' cells among 60."""
    import json

    from cytofm.stages.mil import run_mil
    from cytofm.store import PatchStoreWriter, atomic_group, open_store

    rng = np.random.default_rng(0)
    signal = rng.normal(size=8) * 2.5
    features, cells, labels, groups, abnormal = {}, {}, {}, {}, {}
    for i in range(20):
        sid = f"s{i:02d}"
        feats = rng.normal(size=(60, 8)).astype(np.float32)
        labels[sid] = ["normal", "abnormal"][i % 2]
        groups[sid] = f"p{i // 2}"
        if i % 2:
            feats[:3] += signal
        abnormal[sid] = np.arange(60) < 3 if i % 2 else np.zeros(60, bool)
        features[sid] = tmp_path / "f" / f"{sid}.zarr"
        with atomic_group(features[sid]) as g:
            g.create_array("features", shape=feats.shape, dtype="float32")[:] = feats
        cells[sid] = tmp_path / "c" / f"{sid}.zarr"
        with atomic_group(cells[sid]) as g:
            w = PatchStoreWriter(g, 8, 64, {"coords": (np.int64, (2,))})
            w.append(
                rng.integers(0, 255, (60, 8, 8, 3), dtype=np.uint8),
                coords=rng.integers(0, 1000, (60, 2)),
            )
            w.close()
    thumbs = {"s01": (np.full((50, 50, 3), 230, np.uint8), 20.0)}
    res = run_mil(
        features,
        labels,
        groups,
        tmp_path / "mil",
        cells=cells,
        thumbnails=thumbs,
        folds=2,
        seeds=(0, 1),
        bootstrap=100,
        backbone="toy",
        train_args={
            "lr": 3e-3,
            "max_epochs": 60,
            "patience": 15,
            "hidden": 32,
            "attn_dim": 16,
            "dropout": 0.0,
        },
    )
    saved = json.loads((tmp_path / "mil" / "result.json").read_text())
    assert saved["summary"]["auroc"]["mean"] > 0.9
    # out-of-fold: every slide predicted once per seed, folds never split a patient
    for run_ in saved["runs"]:
        assert len({groups[s] for s in run_["test_slides"]}) * 2 == len(run_["test_slides"])
    attn = open_store(tmp_path / "mil" / "attention.zarr")
    ranks = [
        float(attn[s][:][abnormal[s]].mean() > attn[s][:][~abnormal[s]].mean())
        for s in res["slides"]
        if labels[s] == "abnormal"
    ]
    assert np.mean(ranks) >= 0.9  # attention lands on the abnormal cells
    assert (tmp_path / "mil" / "heatmap" / "s01.png").is_file()
    assert (tmp_path / "mil" / "montage" / "s00.png").is_file()
