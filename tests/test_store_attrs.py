"""Typed, versioned store attributes (cytofm/store_attrs.py): writers stamp them, open_store
refuses a version this code does not read, version-1 stores (no schema) are read as is."""

import json

import pytest
import zarr

from cytofm.config import DatasetConfig
from cytofm.errors import InputDataError
from cytofm.stages.dataset import run_import
from cytofm.store import atomic_group, open_store
from cytofm.store_attrs import STORE_VERSION, StoreVersionError, read_attrs, store_attrs
from tests.test_datasets import _folder


def test_a_written_store_carries_its_schema_and_reads_back_typed(tmp_path):
    cfg = DatasetConfig(name="toy", path=str(_folder(tmp_path)), patch_px=16, chunk=4)
    run_import(cfg, tmp_path / "toy.zarr")
    store = open_store(tmp_path / "toy.zarr")
    assert store.attrs["schema"] == {"name": "cytofm.datasets-store", "version": STORE_VERSION}
    attrs = read_attrs(store, "datasets", "toy.zarr")
    assert attrs.classes == ["a_cls", "b_cls"] and attrs.class_counts == {"a_cls": 3, "b_cls": 3}
    assert attrs.provenance["stage"] == "import_dataset"
    with pytest.raises(InputDataError, match="is a datasets store, not a cells store"):
        read_attrs(store, "cells", "toy.zarr")


def _store(path, attrs):
    with atomic_group(path) as g:
        g.attrs.update(attrs)
    return path


def test_a_newer_version_is_refused_naming_version_and_rerun(tmp_path):
    attrs = store_attrs(
        "features", backbone="b", n=0, dim=4, source_mpp=None, provenance={"stage": "embed"}
    )
    attrs["schema"]["version"] = STORE_VERSION + 1
    path = _store(tmp_path / "f.zarr", attrs)
    with pytest.raises(StoreVersionError) as err:
        open_store(path)
    msg = str(err.value)
    assert f"features store of version {STORE_VERSION + 1}" in msg
    assert "reads versions [1, 2]" in msg and "snakemake --forcerun embed" in msg


def test_version_one_stores_are_read_and_missing_attributes_named(tmp_path):
    old = {"backbone": "b", "n": 3, "dim": 4, "source_mpp": 0.5, "provenance": {}, "extra": 1}
    store = open_store(_store(tmp_path / "old.zarr", old))  # no schema: version 1
    assert read_attrs(store, "features").n == 3
    partial = open_store(_store(tmp_path / "partial.zarr", {"backbone": "b"}))
    with pytest.raises(InputDataError, match="lacks attributes of a features store.*embed"):
        read_attrs(partial, "features", "partial.zarr")
    with pytest.raises(TypeError):
        store_attrs("cells", slide_id="s")  # a writer cannot leave one out


def test_a_foreign_schema_is_not_taken_for_a_store(tmp_path):
    path = _store(tmp_path / "x.zarr", {"schema": {"name": "other-tool", "version": 1}})
    with pytest.raises(StoreVersionError, match="not a cytofm store"):
        open_store(path)
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["attributes"]["schema"]["name"] == "other-tool"
    assert zarr.open_group(str(path), mode="r").attrs["schema"]["version"] == 1
