import numpy as np
import pytest

from cytofm.store import PatchStoreWriter, atomic_group, open_store, write_strings


def test_writer_appends_in_whole_chunks(tmp_path):
    with atomic_group(tmp_path / "s.zarr") as g:
        w = PatchStoreWriter(g, 8, chunk=4, columns={"labels": (np.int16, ()), "ids": (str, ())})
        for i in range(5):  # 5 batches of 3 = 15 rows
            imgs = np.full((3, 8, 8, 3), i, np.uint8)
            w.append(
                imgs,
                labels=np.arange(3, dtype=np.int16) + 3 * i,
                ids=np.array([f"r{3 * i + k}" for k in range(3)]),
            )
        assert w.n == 12  # three whole chunks written, three rows buffered
        assert w.close() == 15
    s = open_store(tmp_path / "s.zarr")
    assert s["images"].shape == (15, 8, 8, 3) and s["images"].chunks == (4, 8, 8, 3)
    assert s["labels"][:].tolist() == list(range(15))
    assert s["ids"][-1] == "r14"
    assert s["images"][14, 0, 0, 0] == 4


def test_failed_write_leaves_no_store(tmp_path):
    with pytest.raises(RuntimeError), atomic_group(tmp_path / "s.zarr") as g:
        g.create_array("x", shape=(2,), dtype="int8")
        raise RuntimeError("job killed")
    assert not (tmp_path / "s.zarr").exists()
    assert not list(tmp_path.iterdir())


def test_writer_validates_rows(tmp_path):
    with atomic_group(tmp_path / "s.zarr") as g:
        w = PatchStoreWriter(g, 8, chunk=4, columns={"labels": (np.int16, ())})
        with pytest.raises(ValueError, match="uint8"):
            w.append(np.zeros((1, 8, 8, 3), np.float32), labels=np.zeros(1))
        with pytest.raises(ValueError, match="has 2 rows, images have 1"):
            w.append(np.zeros((1, 8, 8, 3), np.uint8), labels=np.zeros(2))
        write_strings(g, "names", ["a", "bb"])
    assert open_store(tmp_path / "s.zarr")["names"][:].tolist() == ["a", "bb"]


def test_open_store_explains_a_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="Re-run the stage"):
        open_store(tmp_path / "missing.zarr")
