"""Inductive evaluation: pretraining never reads a task's test rows, unless the config says
transductive, and every result says which was done."""

import json

import numpy as np
import pytest

from cytofm.config import TaskConfig
from cytofm.datasets import pixel_hash
from cytofm.eval.tasks import load_task_data, task_split
from cytofm.inductive import exposure, held_out_rows, leak_message, slide_leaks
from cytofm.ssl.data import PatchSource
from cytofm.stages.context import JobContext
from cytofm.stages.pretrain import run_pretrain
from cytofm.store import PatchStoreWriter, atomic_group
from tests.test_ssl_train import TINY

N = 60


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A labelled collection: 3 classes, 12 patients, pixel value = row index (traceable)."""
    path = tmp_path_factory.mktemp("ind") / "datasets" / "toy.zarr"
    images = np.zeros((N, 32, 32, 3), np.uint8) + np.arange(N, dtype=np.uint8)[:, None, None, None]
    labels = np.arange(N) % 3
    groups = np.array([f"p{i // 5:02d}" for i in range(N)])
    hashes = np.array([pixel_hash(im) for im in images], np.uint64)
    with atomic_group(path) as g:
        columns = {"labels": (np.int16, ()), "groups": (str, ()), "pixel_hash": (np.uint64, ())}
        w = PatchStoreWriter(g, 32, 16, columns)
        w.append(images, labels=labels.astype(np.int16), groups=groups, pixel_hash=hashes)
        w.close()
        g.attrs.update({"classes": ["a", "b", "c"]})
    return path


def _task(name, **kw):
    return TaskConfig(name=name, dataset="toy", **kw)


def test_held_out_rows_are_the_tasks_test_splits(dataset):
    a, b = _task("a"), _task("b", split_seed=5)
    rows, per_task = held_out_rows(dataset, [a, b])
    test_a = task_split(a, load_task_data(a, dataset)).test
    test_b = task_split(b, load_task_data(b, dataset)).test
    assert rows.tolist() == sorted(set(test_a) | set(test_b))
    assert per_task == {"a": len(test_a), "b": len(test_b)}


def test_patch_source_never_reads_excluded_rows(dataset):
    rows, _ = held_out_rows(dataset, [_task("a")])
    source = PatchSource([dataset], exclude={0: rows})
    assert len(source) == N - len(rows) and source.n_excluded == len(rows)
    for epoch in range(3):
        order = source.epoch_order(seed=0, epoch=epoch)
        assert sorted(order.tolist()) == sorted(set(range(N)) - set(rows.tolist()))
        seen = source.read(order)[:, 0, 0, 0]  # pixel value = row index
        assert not set(seen.tolist()) & set(rows.tolist())


def _pretrain(dataset, tmp_path, transductive):
    cfg = TINY.updated({"optim.steps": 2, "probe.dataset": "", "transductive": transductive})
    task = _task("a")
    out = tmp_path / ("trans" if transductive else "ind")
    run_pretrain(
        cfg,
        [dataset],
        out,
        job=JobContext(results_dir=tmp_path),
        held_out={str(dataset): [task.to_dict()]},
    )
    return json.loads((out / "backbone" / "config.json").read_text())["provenance"], out


def test_pretraining_records_what_it_left_out_and_results_say_so(dataset, tmp_path):
    from cytofm.inductive import load_content

    prov, out = _pretrain(dataset, tmp_path, transductive=False)
    test = task_split(_task("a"), load_task_data(_task("a"), dataset)).test
    n_test = len(test)
    assert prov["inductive"] == {
        "transductive": False,
        "datasets": ["toy"],
        "excluded_rows": {"toy": {"rows": n_test, "tasks": {"a": n_test}}},
        "content_read": {
            "file": "content_read.npz",
            "images": N - n_test,
            "slides": 0,
            "unchecked_stores": [],
        },
    }
    # the record beside the backbone holds the pixels of every row read, none of the test's
    from cytofm.store import open_store

    hashes = open_store(dataset)["pixel_hash"][:]
    read = load_content(out / "backbone")["pixel_hash"]
    assert sorted(read.tolist()) == sorted(np.delete(hashes, test).tolist())
    assert prov["n_patches"] == N - n_test
    seen = exposure(prov, "pretrained", "toy")
    assert seen["transductive"] is False and seen["test_rows_excluded"] == n_test
    assert seen["dataset_pretrained_on"] is True


def test_transductive_is_recorded(dataset, tmp_path):
    prov, _ = _pretrain(dataset, tmp_path, transductive=True)
    assert prov["inductive"]["transductive"] is True
    assert prov["inductive"]["excluded_rows"] == {} and prov["n_patches"] == N
    seen = exposure(prov, "pretrained", "toy")
    assert seen["transductive"] is True and seen["test_rows_excluded"] == 0
    assert exposure(None, "random", "toy")["pretraining"].startswith("none")


def test_slide_leaks_name_the_task_the_stores_and_the_fix():
    leaks = slide_leaks(["s1", "s2", "s3"], {"dx": ["s2", "s3", "s4"], "other": ["s9"]})
    assert leaks == {"dx": ["s2", "s3"]}
    msg = leak_message(leaks, {"s2": "r/cells/s2.zarr", "s3": "r/cells/s3.zarr"}, ["cells"])
    assert "slide task 'dx'" in msg and "r/cells/s2.zarr" in msg
    assert "pretrain.transductive: true" in msg and "pretrain.splits" in msg
