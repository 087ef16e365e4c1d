"""The embed and evaluate stages on a small labelled store: round trips, results, reruns."""

import itertools
import json

import numpy as np
import pytest
import timm
import torch

from cytofm.config import EvalConfig, TaskConfig
from cytofm.errors import InputDataError
from cytofm.eval.backbones import BackboneSpec, load_backbone_spec
from cytofm.eval.calibration import apply_temperature, fit_temperature
from cytofm.eval.features import embed_array
from cytofm.eval.metrics import classification_metrics
from cytofm.eval.predictions import load_predictions
from cytofm.results import RESULT_VERSION
from cytofm.ssl.export import export_backbone
from cytofm.stages.embed import run_embed
from cytofm.stages.evaluate import run_evaluate
from cytofm.store import PatchStoreWriter, atomic_group, open_store, write_strings

N_PER_CLASS = 30
CLASSES = ["dark", "mid", "light"]


def _images(rng, n):
    labels = np.repeat(np.arange(3), n // 3)
    levels = np.array([40, 120, 200])[labels]
    images = rng.normal(levels[:, None, None, None], 25, size=(len(labels), 32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    images, labels = _images(rng, 3 * N_PER_CLASS)
    groups = np.array([f"g{i % 15:02d}" for i in range(len(labels))])
    store = root / "datasets" / "toy.zarr"
    with atomic_group(store) as g:
        w = PatchStoreWriter(
            g, 32, 16, {"labels": (np.int16, ()), "groups": (str, ()), "ids": (str, ())}
        )
        w.append(
            images,
            labels=labels.astype(np.int16),
            groups=groups,
            ids=np.array([f"img{i}.png" for i in range(len(labels))]),
        )
        w.close()
        # the site of each image (its group's): for leave-one-site-out and the batch probe
        write_strings(g, "meta_site", [f"s{int(x[1:]) % 3}" for x in groups])
        g.attrs.update({"classes": CLASSES, "mpp": 0.75, "meta_columns": ["site"]})
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_small_patch16_224",
        num_classes=0,
        embed_dim=32,
        depth=1,
        num_heads=2,
        patch_size=8,
        img_size=32,
        dynamic_img_size=True,
    )
    bb_dir = root / "pretrain" / "backbone"
    export_backbone(
        vit,
        bb_dir,
        arch="vit_small_patch16_224",
        model_args={"embed_dim": 32, "depth": 1, "num_heads": 2},
        img_size=32,
        patch_size=8,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        patch_mpp=0.75,
        patch_um=24,
    )
    spec = BackboneSpec("ssl", "pretrained")
    feats = root / "features" / "ssl" / "datasets" / "toy.zarr"
    run_embed(spec, store, feats, pretrained_dir=bb_dir, batch_size=16, device="cpu")
    return {
        "root": root,
        "store": store,
        "bb_dir": bb_dir,
        "spec": spec,
        "feats": feats,
        "images": images,
        "labels": labels,
    }


def test_feature_store_round_trip(setup):
    fs = open_store(setup["feats"])
    assert fs["features"].dtype == np.float16
    assert fs["features"].shape == (90, 32)
    assert fs["rows"][:].tolist() == list(range(90))
    assert fs["ids"][5] == "img5.png"
    bb = load_backbone_spec(setup["spec"], setup["bb_dir"])
    expected = embed_array(bb, setup["images"], batch_size=7)
    assert np.allclose(fs["features"][:].astype(np.float32), expected, atol=2e-2, rtol=2e-3)
    prov = fs.attrs["provenance"]
    assert prov["backbone"]["weights_sha256"] == bb.identity["weights_sha256"]
    assert prov["preprocessing"]["input_size"] == 32
    assert len(prov["source_sha256"]) == 64
    assert prov["stage"] == "embed"


def test_loader_workers_and_background_writes_change_no_feature(setup, tmp_path):
    """Two DataLoader workers and chunked background writes (chunks of 7 rows, batches of 5):
    the same features as one process writing once."""
    from cytofm.eval.features import ChunkSink

    bb = load_backbone_spec(setup["spec"], setup["bb_dir"])
    src = open_store(setup["store"])
    expected = embed_array(bb, src["images"], batch_size=16)
    with atomic_group(tmp_path / "f.zarr") as g:
        arr = g.create_array("f", shape=expected.shape, chunks=(7, 32), dtype="float32")
        with ChunkSink(arr) as sink:
            embed_array(bb, src["images"], batch_size=5, num_workers=2, sink=sink.put)
    got = open_store(tmp_path / "f.zarr")["f"][:]
    assert np.array_equal(got, expected)
    out = tmp_path / "w.zarr"
    summary = run_embed(
        setup["spec"],
        setup["store"],
        out,
        pretrained_dir=setup["bb_dir"],
        batch_size=16,
        device="cpu",
        num_workers=2,
    )
    assert summary["num_workers"] == 2 and summary["images_per_second"] > 0
    same = open_store(setup["feats"])["features"][:]
    assert np.array_equal(open_store(out)["features"][:], same)


def test_the_read_ahead_thread_keeps_order_raises_read_errors_and_stops(setup):
    """With no worker processes a thread reads ahead: the same rows in the same order as a
    plain loop, a failed read surfaces in the caller naming its cause, and a consumer that
    stops early leaves no reader thread behind."""
    import threading

    from cytofm.eval.features import _Batches, _ReadAhead

    images = open_store(setup["store"])["images"]
    got = list(_ReadAhead(_Batches(images, 6), pin=False))
    plain = _Batches(images, 6)
    want = [plain[i] for i in range(len(plain))]
    assert [s for s, _ in got] == [s for s, _ in want] and len(got) > 2
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, want, strict=True))

    class Broken(_Batches):
        def __getitem__(self, i):
            if i == 2:
                raise OSError("chunk 2 is damaged")
            return super().__getitem__(i)

    with pytest.raises(OSError, match="chunk 2 is damaged"):
        list(_ReadAhead(Broken(images, 6), pin=False))
    reader = _ReadAhead(_Batches(images, 1), pin=False, depth=1)
    for _ in reader:
        break
    assert not any(t.name == "batch-reader" and t.is_alive() for t in threading.enumerate())


def test_a_failed_background_write_is_raised(tmp_path):
    from cytofm.eval.features import ChunkSink

    class Broken:
        dtype, chunks = np.float32, (4, 2)

        def __setitem__(self, key, value):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with ChunkSink(Broken()) as sink:
            for _ in range(6):
                sink.put(np.zeros((3, 2)))


def labels_of(store):
    return np.asarray(open_store(store)["labels"][:]).astype(int)


def _task(**kw):
    base = dict(
        name="toy",
        dataset="toy",
        shots=[1, 4, 40],
        seeds=[0, 1],
        val_fraction=0.2,
        test_fraction=0.2,
    )
    return TaskConfig(**{**base, **kw})


CFG = EvalConfig().updated(
    {
        "linear.Cs": (0.1, 1.0),
        "bootstrap": 100,
        "lora.lrs": (0.003,),
        "lora.max_steps": 3,
        "lora.batch_size": 8,
        "lora.device": "cpu",
    }
)


@pytest.mark.parametrize("protocol", ["linear", "knn", "fewshot"])
def test_protocols_on_cached_features(setup, protocol, tmp_path):
    out = tmp_path / f"{protocol}.json"
    result = run_evaluate(
        _task(),
        CFG,
        protocol,
        setup["spec"],
        setup["store"],
        out,
        out_predictions=tmp_path / f"{protocol}.predictions.npz",
        features_store=setup["feats"],
    )
    saved = json.loads(out.read_text())
    assert saved["schema"]["version"] == RESULT_VERSION  # the stage writes through the schema
    assert saved["classes"] == CLASSES and saved["protocol"] == protocol
    assert saved["split"]["source"] == "grouped"
    blocks = saved["results"]
    assert blocks
    # train, val (selection), calibration and test rows are disjoint in the result
    parts = {k: set(saved[f"{k}_rows"]) for k in ("val", "calib", "test")}
    assert all(parts.values()) and saved["split"]["n_calib"] == len(parts["calib"])
    for a, b in itertools.combinations(parts, 2):
        assert not parts[a] & parts[b], (a, b)
    for run in (r for b in blocks for r in b["runs"] if "train_rows" in r):
        assert not set(run["train_rows"]) & set().union(*parts.values())
    preds = load_predictions(tmp_path / f"{protocol}.predictions.npz")
    y_test = labels_of(setup["store"])[saved["test_rows"]]
    assert preds["y_test"].tolist() == y_test.tolist()
    for block in blocks:
        assert set(block["summary"]) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}
        s = block["summary"]["balanced_accuracy"]
        per_run = [r["test"]["balanced_accuracy"] for r in block["runs"]]
        # the summary is the runs' numbers: mean and sample std over seeds
        assert s["per_seed"] == pytest.approx(per_run)
        assert s["mean"] == pytest.approx(np.mean(per_run))
        assert s["std"] == pytest.approx(np.std(per_run, ddof=1) if len(per_run) > 1 else 0.0)
        # the interval holds the test-only bootstrap (the seed part only widens it), and
        # resampled patients
        lo, hi = s["ci95"]
        t_lo, t_hi = s["ci95_test_only"]
        assert lo <= t_lo <= t_hi <= hi and s["resampled"] == "groups"
        if len(per_run) > 1 and s["std"] > 0:
            assert hi - lo > t_hi - t_lo  # seed spread widens it
        # the stored predictions reproduce every run's metrics
        key = "all" if block["shots"] is None else f"shots={block['shots']}"
        for run, proba in zip(block["runs"], preds["blocks"][key], strict=True):
            assert np.array(run["test"]["confusion_matrix"]).sum() == saved["split"]["n_test"]
            again = classification_metrics(y_test, proba, CLASSES)["balanced_accuracy"]
            assert again == pytest.approx(run["test"]["balanced_accuracy"], abs=1e-6)
        # calibration: each run's temperature is fitted on the validation rows' probabilities
        # kept beside the test ones, and the scaled test probabilities are those divided by it
        assert len(preds["y_val"]) == saved["split"]["n_val"] > 0
        for i, run in enumerate(block["runs"]):
            val = preds["val"][key][i]
            assert val.shape == (len(preds["y_val"]), len(CLASSES))
            assert run["temperature"] == pytest.approx(fit_temperature(preds["y_val"], val))
            assert preds["temperatures"][key][i] == pytest.approx(run["temperature"])
            want = apply_temperature(preds["blocks"][key][i], run["temperature"])
            assert np.allclose(preds["calibrated"][key][i], want, atol=1e-6)
    if protocol == "fewshot":
        assert [b["shots"] for b in blocks] == [1, 4]
        assert (
            saved["skipped"][0]["shots"] == 40 and "fewer than 40" in saved["skipped"][0]["reason"]
        )
        four = blocks[1]
        assert [r["seed"] for r in four["runs"]] == [0, 1]
        assert all(len(r["train_rows"]) == 12 for r in four["runs"])
        assert four["summary"]["balanced_accuracy"]["mean"] > 0.8  # brightness is easy
    else:
        assert blocks[0]["summary"]["balanced_accuracy"]["mean"] > 0.9
    assert result["test_rows"] == saved["test_rows"]


def test_linear_probe_on_fractions_of_the_training_split(setup, tmp_path):
    """`fractions`: one linear block per share of the training split, nested per seed,
    stratified (every class kept), after the full-data block."""
    from cytofm.eval.splits import sample_fraction

    out = tmp_path / "linear.json"
    run_evaluate(
        _task(fractions=[0.1, 0.5]),
        CFG,
        "linear",
        setup["spec"],
        setup["store"],
        out,
        features_store=setup["feats"],
    )
    saved = json.loads(out.read_text())
    blocks = saved["results"]
    assert [(b["shots"], b["fraction"]) for b in blocks] == [(None, None), (None, 0.1), (None, 0.5)]
    n_train = saved["split"]["n_train"]
    for block in blocks[1:]:
        assert [r["seed"] for r in block["runs"]] == [0, 1]
        for run in block["runs"]:
            rows = np.array(run["train_rows"])
            assert abs(len(rows) - block["fraction"] * n_train) <= 3
            assert set(setup["labels"][rows]) == {0, 1, 2}
    small, large = blocks[1]["runs"][0]["train_rows"], blocks[2]["runs"][0]["train_rows"]
    assert set(small) <= set(large)  # nested for one seed
    with pytest.raises(ValueError, match="fraction"):
        sample_fraction(setup["labels"], np.arange(10), 0.0, 0)


@pytest.mark.parametrize("bad", [[0.0], [1.5]])
def test_fractions_out_of_range_are_refused(bad):
    from cytofm.errors import ConfigError

    with pytest.raises(ConfigError, match="fractions"):
        _task(fractions=bad)


def test_results_are_reproducible(setup, tmp_path):
    a = run_evaluate(
        _task(),
        CFG,
        "fewshot",
        setup["spec"],
        setup["store"],
        tmp_path / "a.json",
        features_store=setup["feats"],
    )
    b = run_evaluate(
        _task(),
        CFG,
        "fewshot",
        setup["spec"],
        setup["store"],
        tmp_path / "b.json",
        features_store=setup["feats"],
    )
    assert a["results"] == b["results"]


def test_lora_protocol_writes_results(setup, tmp_path):
    out = tmp_path / "lora.json"
    run_evaluate(
        _task(shots=[2]),
        CFG,
        "lora",
        setup["spec"],
        setup["store"],
        out,
        pretrained_dir=setup["bb_dir"],
    )
    saved = json.loads(out.read_text())
    (block,) = saved["results"]
    assert block["shots"] == 2 and [r["lr"] for r in block["runs"]] == [0.003, 0.003]
    assert all(len(r["train_rows"]) == 6 for r in block["runs"])
    # the config capped the steps: the result says so, against the protocol's 50 + 100 x 2
    assert block["budget"] == {
        "steps": 3,
        "warmup_steps": 1,
        "protocol_steps": 250,
        "protocol_warmup_steps": 50,
        "reduced": True,
        "departures": ["3 of 250 steps", "1 of 5 learning rates"],
    }


def test_stale_features_are_refused(setup, tmp_path):
    short = tmp_path / "short.zarr"
    with atomic_group(short) as g:
        g.create_array("features", shape=(10, 32), dtype="float16")
    with pytest.raises(InputDataError, match="stale"):
        run_evaluate(
            _task(),
            CFG,
            "linear",
            setup["spec"],
            setup["store"],
            tmp_path / "x.json",
            features_store=short,
        )


def test_missing_label_array_names_the_key(setup, tmp_path):
    with pytest.raises(InputDataError, match="evaluate.tasks.toy.label"):
        run_evaluate(
            _task(label="grade"),
            CFG,
            "linear",
            setup["spec"],
            setup["store"],
            tmp_path / "x.json",
            features_store=setup["feats"],
        )


def test_store_without_images_is_a_clear_error(setup, tmp_path):
    tiles = tmp_path / "tiles.zarr"
    with atomic_group(tiles) as g:
        g.create_array("boxes", shape=(3, 4), dtype="int64")
    with pytest.raises(ValueError, match="save_images"):
        run_embed(setup["spec"], tiles, tmp_path / "f.zarr", pretrained_dir=setup["bb_dir"])
    assert not (tmp_path / "f.zarr").exists()


def test_a_store_without_cells_gets_an_empty_feature_store(setup, tmp_path):
    """A slide where no cell was found still gets its (empty) features, so its MIL bag and the
    report can list it rather than the run stopping."""
    cells = tmp_path / "cells.zarr"
    with atomic_group(cells) as g:
        PatchStoreWriter(g, 32, 8, {"coords": (np.int64, (2,))}).close()
        write_strings(g, "ids", [])
    run_embed(setup["spec"], cells, tmp_path / "f.zarr", pretrained_dir=setup["bb_dir"])
    f = open_store(tmp_path / "f.zarr")
    assert f["features"].shape[0] == 0 and f["features"].shape[1] > 0
    assert f["rows"].shape == (0,) and f["ids"].shape == (0,)


def test_leave_one_site_out_tests_every_row_once_and_keeps_each_sites_score(setup, tmp_path):
    task = _task(name="toy_lost", split="leave_one_out", hold_out="site", shots=[1, 4])
    sites = np.array([f"s{i % 15 % 3}" for i in range(90)])
    for protocol in ("linear", "fewshot"):
        out = tmp_path / f"{protocol}.json"
        preds_path = tmp_path / f"{protocol}.predictions.npz"
        result = run_evaluate(
            task,
            CFG,
            protocol,
            setup["spec"],
            setup["store"],
            out,
            out_predictions=preds_path,
            features_store=setup["feats"],
        )
        saved = json.loads(out.read_text())
        assert saved["split"]["source"] == "leave one out: site"
        assert [f["held_out"] for f in saved["split"]["folds"]] == ["s0", "s1", "s2"]
        rows = np.array(saved["test_rows"])
        assert sorted(rows.tolist()) == list(range(90))  # every row tested exactly once
        assert [f["n_test"] for f in saved["split"]["folds"]] == [30, 30, 30]
        preds = load_predictions(preds_path)
        assert preds["y_test"].tolist() == setup["labels"][rows].tolist()
        assert preds["y_val"] is None and not preds["val"]  # no single validation set
        for block in result["results"]:
            key = "all" if block["shots"] is None else f"shots={block['shots']}"
            probas = preds["blocks"][key]
            # the pooled summary scores the pooled predictions; each site its own rows
            pooled = [classification_metrics(preds["y_test"], p, CLASSES) for p in probas]
            assert block["summary"]["balanced_accuracy"]["per_seed"] == pytest.approx(
                [m["balanced_accuracy"] for m in pooled]
            )
            for h in block["held_out"]:
                mine = sites[rows] == h["value"]
                want = [
                    classification_metrics(preds["y_test"][mine], p[mine], CLASSES)[
                        "balanced_accuracy"
                    ]
                    for p in probas
                ]
                assert h["balanced_accuracy"] == pytest.approx(want)
            # one temperature per seed and site, each site's rows scaled by its own
            temps = np.asarray(preds["temperatures"][key])
            assert temps.shape == (len(probas), 3)
            for i, p in enumerate(probas):
                for f, site in enumerate(["s0", "s1", "s2"]):
                    mine = sites[rows] == site
                    want = apply_temperature(p[mine], temps[i, f])
                    assert np.allclose(preds["calibrated"][key][i][mine], want, atol=1e-5)
        if protocol == "fewshot":
            assert [b["shots"] for b in result["results"]] == [1, 4]
            assert len(result["results"][0]["runs"][0]["folds"]) == 3


def test_leave_one_out_of_a_single_value_or_a_missing_column_is_refused(setup):
    from cytofm.errors import InputDataError
    from cytofm.eval.tasks import load_task_data, task_folds

    data = load_task_data(_task(), setup["store"])
    with pytest.raises(InputDataError, match="no column 'scanner'.*meta_columns"):
        task_folds(_task(split="leave_one_out", hold_out="scanner"), data)
    one = {**data, "groups": np.full(90, "g")}
    with pytest.raises(InputDataError, match="at least two values"):
        task_folds(_task(split="leave_one_out", hold_out="groups"), one)


def test_batch_probe_and_robustness_index_of_a_backbone(setup, tmp_path):
    """The toy images differ by class only; the site says nothing about them, so the probe
    predicting the site is near chance and neighbourhoods follow the class."""
    from cytofm.stages.robustness import run_robustness

    out = tmp_path / "robustness.json"
    r = run_robustness(_task(batch="site"), CFG, "ssl", setup["store"], setup["feats"], out)
    assert json.loads(out.read_text())["batch_values"] == ["s0", "s1", "s2"]
    assert r["class_probe"]["balanced_accuracy"] > 0.9
    assert r["batch_probe"]["chance"] == pytest.approx(1 / 3)
    assert r["batch_probe"]["balanced_accuracy"] < 0.6
    lo, hi = r["batch_probe"]["ci95"]
    assert 0.02 < hi - lo < 0.5 and lo < 1 / 3 + 0.05  # an interval with width, holding chance
    assert r["robustness"]["robustness_index"] > 0.8


def test_test_rows_pretraining_read_by_content_are_refused(setup, tmp_path):
    """The backbone's record of what pretraining read holds the pixels of two test images
    (as if imported under another dataset name): the evaluation refuses before running,
    naming the task and the rows; transductive pretraining is let through and counted."""
    import shutil

    from cytofm.datasets import pixel_hash
    from cytofm.errors import InputDataError
    from cytofm.inductive import CONTENT_FILE, write_content

    hashes = np.array([pixel_hash(im) for im in setup["images"]], np.uint64)
    store = tmp_path / "toy.zarr"
    shutil.copytree(setup["store"], store)
    with atomic_group(tmp_path / "h.zarr") as g:  # the column an import writes
        g.create_array("pixel_hash", data=hashes, chunks=(len(hashes),))
    shutil.copytree(tmp_path / "h.zarr" / "pixel_hash", store / "pixel_hash")
    bb = tmp_path / "backbone"
    shutil.copytree(setup["bb_dir"], bb)
    plain = run_evaluate(
        _task(), CFG, "knn", setup["spec"], store, tmp_path / "p.json",
        features_store=setup["feats"],
    )  # fmt: skip
    test_rows = plain["test_rows"]
    read = np.r_[hashes[test_rows[:2]], hashes[np.setdiff1d(np.arange(90), test_rows)[:10]]]
    write_content(bb, {"pixel_hash": np.sort(read), "slide_sha256": [], "unchecked": []})
    assert (bb / CONTENT_FILE).is_file()
    args = (_task(), CFG, "knn", setup["spec"], store)
    with pytest.raises(InputDataError, match=r"task 'toy': 2 of its \d+ test images were read"):
        run_evaluate(*args, tmp_path / "a.json", features_store=setup["feats"], pretrained_dir=bb)
    assert not (tmp_path / "a.json").exists()
    # only training rows read: checked and passed
    write_content(bb, {"pixel_hash": np.sort(read[2:]), "slide_sha256": [], "unchecked": []})
    ok = run_evaluate(*args, tmp_path / "b.json", features_store=setup["feats"], pretrained_dir=bb)
    assert ok["exposure"]["content_checked"] and ok["exposure"]["test_images_pretrained_on"] == 0
    # transductive pretraining: let through, and the result counts what it saw
    write_content(bb, {"pixel_hash": np.sort(read), "slide_sha256": [], "unchecked": []})
    config = json.loads((bb / "config.json").read_text())
    config["provenance"] = {"inductive": {"transductive": True}}
    (bb / "config.json").write_text(json.dumps(config))
    seen = run_evaluate(
        *args, tmp_path / "c.json", features_store=setup["feats"], pretrained_dir=bb
    )
    assert seen["exposure"]["test_images_pretrained_on"] == 2
    assert seen["exposure"]["transductive"]
