import numpy as np
import pytest

from cytofm.errors import InputDataError
from cytofm.ssl.data import PatchSource
from cytofm.store import PatchStoreWriter, atomic_group


def _store(path, n, px=8, chunk=4, value_offset=0):
    with atomic_group(path) as g:
        w = PatchStoreWriter(g, px, chunk, {})
        imgs = np.zeros((n, px, px, 3), np.uint8)
        imgs[:, 0, 0, 0] = np.arange(n) + value_offset  # row id in the first pixel
        w.append(imgs)
        w.close()
    return path


def test_epoch_order_is_a_deterministic_chunk_local_permutation(tmp_path):
    src = PatchSource(
        [_store(tmp_path / "a.zarr", 10), _store(tmp_path / "b.zarr", 7, value_offset=100)],
        window_chunks=2,
    )
    assert len(src) == 17
    o1, o2 = src.epoch_order(0, 0), src.epoch_order(0, 0)
    assert np.array_equal(o1, o2) and sorted(o1.tolist()) == list(range(17))
    assert not np.array_equal(o1, src.epoch_order(0, 1))
    # read returns the rows asked for, across stores
    rows = src.read(np.array([0, 9, 10, 16]))
    assert rows[:, 0, 0, 0].tolist() == [0, 9, 100, 106]


def test_mixed_patch_sizes_are_refused(tmp_path):
    with pytest.raises(InputDataError, match="differ in patch size"):
        PatchSource([_store(tmp_path / "a.zarr", 4, px=8), _store(tmp_path / "b.zarr", 4, px=16)])


def test_a_store_without_patches_adds_nothing_and_is_listed(tmp_path):
    """A slide where no cell was found has an empty cell store; pretraining reads the others."""
    a = _store(tmp_path / "a.zarr", 6)
    empty = _store(tmp_path / "empty.zarr", 0)
    b = _store(tmp_path / "b.zarr", 5, value_offset=100)
    src = PatchSource([a, empty, b], window_chunks=2)
    assert len(src) == 11 and src.empty == [empty]
    order = src.epoch_order(0, 0)
    assert sorted(order.tolist()) == list(range(11))
    assert sorted(src.read(np.sort(order))[:, 0, 0, 0].tolist()) == [*range(6), *range(100, 105)]
    with pytest.raises(InputDataError, match="hold no patches"):
        PatchSource([empty])
