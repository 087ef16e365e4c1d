import cv2
import numpy as np
import pandas as pd
import pytest

from cytofm.config import DatasetConfig
from cytofm.datasets import decode_image, fit_patch, list_collection
from cytofm.errors import InputDataError
from cytofm.stages.dataset import run_import
from cytofm.store import open_store


def _folder(tmp_path, n=3):
    rng = np.random.default_rng(0)
    for cls in ("b_cls", "a_cls"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / "imgs" / cls / f"{i}.png"), img)
    (tmp_path / "imgs" / "a_cls" / "notes.txt").write_text("not an image")
    return tmp_path / "imgs"


def test_folder_import(tmp_path):
    root = _folder(tmp_path)
    cfg = DatasetConfig(name="toy", path=str(root), patch_px=16, chunk=4)
    summary = run_import(cfg, tmp_path / "toy.zarr")
    store = open_store(tmp_path / "toy.zarr")
    assert summary["n_images"] == 6
    assert store.attrs["classes"] == ["a_cls", "b_cls"]
    assert store["images"].shape == (6, 16, 16, 3)
    assert store["labels"][:].tolist() == [0, 0, 0, 1, 1, 1]
    assert store["ids"][0] == "a_cls/0.png"
    assert store.attrs["provenance"]["stage"] == "import_dataset"
    # the same files give the same checksum; a changed file a different one
    first = store.attrs["provenance"]["source_sha256"]
    cv2.imwrite(str(root / "a_cls" / "0.png"), np.zeros((40, 50, 3), np.uint8))
    run_import(cfg, tmp_path / "toy2.zarr")
    assert open_store(tmp_path / "toy2.zarr").attrs["provenance"]["source_sha256"] != first


def test_csv_import_with_query_and_groups(tmp_path):
    root = _folder(tmp_path)
    table = pd.DataFrame(
        {
            "file": [f"imgs/{c}/{i}.png" for c in ("a_cls", "b_cls") for i in range(3)],
            "y": ["a"] * 3 + ["b"] * 3,
            "group": ["g1", "g1", "g2", "g3", "g3", "g3"],
            "keep": [1, 0, 1, 1, 1, 0],
        }
    )
    table.to_csv(tmp_path / "list.csv", index=False)
    cfg = DatasetConfig(
        name="toy",
        path=str(tmp_path / "list.csv"),
        format="csv",
        path_column="file",
        label_column="y",
        query="keep == 1",
        patch_px=16,
    )
    listed = list_collection(cfg)
    assert len(listed) == 4 and str(root) in listed["path"][0]
    run_import(cfg, tmp_path / "toy.zarr")
    store = open_store(tmp_path / "toy.zarr")
    assert store["groups"][:].tolist() == ["g1", "g2", "g3", "g3"]


def test_bad_collections_are_named(tmp_path):
    with pytest.raises(InputDataError, match="folder .* not found"):
        list_collection(DatasetConfig(name="x", path=str(tmp_path / "none")))
    (tmp_path / "l.csv").write_text("path,cls\na.png,x\n")
    with pytest.raises(InputDataError, match=r"lacks column\(s\) \['label'\]"):
        list_collection(DatasetConfig(name="x", path=str(tmp_path / "l.csv"), format="csv"))
    (tmp_path / "m.csv").write_text("path,label\nmissing.png,x\n")
    with pytest.raises(InputDataError, match="1 listed image.*missing.png"):
        list_collection(DatasetConfig(name="x", path=str(tmp_path / "m.csv"), format="csv"))
    with pytest.raises(InputDataError, match="cannot decode image broken.png"):
        decode_image(b"not a png", "broken.png")


def test_decode_grey_and_rgba():
    grey = cv2.imencode(".png", np.full((5, 5), 77, np.uint8))[1].tobytes()
    assert decode_image(grey, "g").shape == (5, 5, 3)
    rgba = np.zeros((5, 5, 4), np.uint8)  # fully transparent -> white
    out = decode_image(cv2.imencode(".png", rgba)[1].tobytes(), "t")
    assert (out == 255).all()


def test_fit_patch_field_of_view():
    img = np.zeros((100, 100, 3), np.uint8)
    img[40:60, 40:60] = 200  # a 20 px square in the centre
    cfg = DatasetConfig(name="x", path="p", mpp=0.5, patch_um=20, patch_px=10)  # 40 px crop
    out = fit_patch(img, cfg)
    assert out.shape == (10, 10, 3)
    assert out[5, 5, 0] == 200 and out[0, 0, 0] == 0  # square fills the middle half
    whole = fit_patch(
        np.zeros((30, 60, 3), np.uint8), DatasetConfig(name="x", path="p", patch_px=12)
    )
    assert whole.shape == (12, 12, 3)


def test_csv_split_column_is_stored_and_used(tmp_path):
    from cytofm.config import TaskConfig
    from cytofm.eval.tasks import load_task_data, task_split

    root = _folder(tmp_path, n=4)
    rows = []
    for cls in ("a_cls", "b_cls"):
        for i, split in enumerate(["train", "train", "val", "test"]):
            rows.append({"path": f"imgs/{cls}/{i}.png", "label": cls, "split": split})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    cfg = DatasetConfig(name="toy", path=str(tmp_path / "labels.csv"), format="csv", patch_px=16)
    run_import(cfg, tmp_path / "toy.zarr")
    store = open_store(tmp_path / "toy.zarr")
    assert [str(s) for s in store["splits"][:]] == [r["split"] for r in rows]
    task = TaskConfig(name="t", dataset="toy")
    split = task_split(task, load_task_data(task, tmp_path / "toy.zarr"))
    assert split.source == "given"
    assert split.test.tolist() == [3, 7] and split.val.tolist() == [2, 6]
    # a row without a split is an error naming the column, not a silent derived split
    rows[1]["split"] = ""
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(InputDataError, match="'split' is empty for 1 rows"):
        run_import(cfg, tmp_path / "toy2.zarr")
    assert not (tmp_path / "toy2.zarr").exists()
    assert root.exists()


def test_each_image_gets_a_pixel_fingerprint_that_survives_renaming_and_format(tmp_path):
    """One picture imported under two names (and saved as PNG and as TIFF) has one
    fingerprint; the record pretraining keeps is built from these."""
    import shutil

    from cytofm.inductive import read_content

    root = _folder(tmp_path)
    other = tmp_path / "copy"
    shutil.copytree(root, other)
    img = cv2.imread(str(root / "a_cls" / "1.png"))
    (other / "a_cls" / "1.png").unlink()
    cv2.imwrite(str(other / "a_cls" / "renamed.tif"), img)
    for name, path in (("a", root), ("b", other)):
        run_import(
            DatasetConfig(name=name, path=str(path), patch_px=16, chunk=4),
            tmp_path / f"{name}.zarr",
        )
    a, b = (open_store(tmp_path / f"{n}.zarr") for n in "ab")
    ha, hb = a["pixel_hash"][:], b["pixel_hash"][:]
    assert ha.dtype == np.uint64 and len(set(ha.tolist())) == 6  # six different pictures
    assert set(ha.tolist()) == set(hb.tolist())  # the same six, whatever their names
    # what pretraining on "b" without its first row read
    keep = np.ones(6, bool)
    keep[0] = False
    content = read_content([tmp_path / "b.zarr"], [keep])
    assert sorted(content["pixel_hash"].tolist()) == sorted(hb[1:].tolist())
    assert content["unchecked"] == [] and content["slide_sha256"] == []
