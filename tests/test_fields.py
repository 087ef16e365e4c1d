"""Specimens made of microscope fields (cytofm/wsi/fields.py): a folder or glob of field images
read as one slide, with each cell's field, and bad fields listed rather than fatal."""

import json

import cv2
import numpy as np
import pytest

from cytofm.config import CellsConfig, TilingConfig
from cytofm.errors import InputDataError
from cytofm.stages.cells import run_cells
from cytofm.stages.tile import run_tile
from cytofm.store import open_store
from cytofm.synthetic.slide import class_mix, render_slide_canvas
from cytofm.wsi.fields import FieldMosaic, is_specimen, slide_sha256
from cytofm.wsi.reader import open_slide


def _write(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def _noise_fields(folder, n=4, size=(64, 48)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    fields = []
    for i in range(n):
        rgb = rng.integers(0, 200, (size[1], size[0], 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"f{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        fields.append(rgb)
    return fields


def test_fields_are_laid_out_apart_and_bad_ones_listed(tmp_path):
    folder = tmp_path / "spec"
    fields = _noise_fields(folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    cv2.imwrite(str(folder / "odd.png"), np.zeros((10, 10, 3), np.uint8))
    (folder / "notes.txt").write_text("not a field")
    assert is_specimen(folder) and is_specimen(f"{folder}/f*.png")
    with open_slide(folder, "spec", 0.5) as slide:
        assert isinstance(slide, FieldMosaic) and slide.backend == "fields"
        assert [f["name"] for f in slide.fields] == ["f0.png", "f1.png", "f2.png", "f3.png"]
        assert slide.bad_fields == [
            {"name": "broken.jpg", "reason": "cannot be decoded"},
            {"name": "odd.png", "reason": "size 10x10, the specimen's fields are 64x48"},
        ]
        # 2 x 2 grid, 64 px of glass between fields
        assert slide.dimensions == (64 * 2 + 64, 48 * 2 + 64) and slide.mpp == 0.5
        for rgb, f in zip(fields, slide.fields, strict=True):
            x0, y0, x1, y1 = f["box"]
            assert np.array_equal(slide.read(x0, y0, (x1 - x0, y1 - y0), 0.5), rgb)
        assert (slide.read(64, 0, (64, 48), 0.5) == 255).all()  # the gap is glass
        index, local = slide.field_of(np.array([[10, 10], [130, 20], [100, 10], [140, 120]]))
        assert index.tolist() == [0, 1, -1, 3]
        assert local[1].tolist() == [2, 20]
    with open_slide(f"{folder}/f[01].png", "two", 0.5) as slide:  # a glob of fields
        assert len(slide.fields) == 2 and slide.dimensions == (64 * 2 + 64, 48)
    before = slide_sha256(folder)
    _write(folder / "f9.jpg", fields[0])
    assert slide_sha256(folder) != before


def test_a_specimen_needs_its_mpp_and_a_usable_field(tmp_path):
    folder = tmp_path / "spec"
    _noise_fields(folder, n=1)
    with pytest.raises(InputDataError, match="mpp"):
        open_slide(folder, "spec", None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputDataError, match="no field images"):
        open_slide(empty, "empty", 0.5)
    (empty / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(InputDataError, match="none of the 1 field images"):
        open_slide(empty, "empty", 0.5)


def synthetic_fields(folder, n: int, seed: int, abnormal: bool = False, size=(640, 480)):
    """Fields of a synthetic Pap-like smear at 0.25 um/px (dense enough to hold cells)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        canvas = render_slide_canvas(
            *size,
            0.25,
            class_mix(abnormal, 0.3),
            cells_per_mm2=900.0,
            cluster_prob=0.0,
            debris_per_mm2=0.0,
            rng=rng,
        )
        _write(folder / f"field_{i:02d}.jpg", canvas.rgb)


def test_a_specimen_through_tiling_and_cells(tmp_path):
    folder = tmp_path / "spec"
    synthetic_fields(folder, 4, seed=1)
    (folder / "field_99.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    tiles, cells = tmp_path / "tiles.zarr", tmp_path / "cells.zarr"
    run_tile(folder, "spec", 0.25, TilingConfig(tile_px=256), tiles, tmp_path / "qc.png")
    summary = run_cells(
        folder,
        "spec",
        0.25,
        tiles,
        CellsConfig(),
        cells,
        tmp_path / "gallery.png",
        out_summary=tmp_path / "cells.json",
    )
    store = open_store(cells)
    n = summary["n_cells"]
    assert n >= 20, summary
    field, local = store["field"][:], store["field_coords"][:]
    assert (field >= 0).all() and len(field) == n
    boxes = np.array([f["box"] for f in store.attrs["fields"]])
    assert np.array_equal(store["coords"][:], boxes[field, :2] + local)
    assert (local >= 0).all() and (local[:, 0] < 640).all() and (local[:, 1] < 480).all()
    written = json.loads((tmp_path / "cells.json").read_text())
    assert sum(f["n_cells"] for f in written["fields"]) == n and len(written["fields"]) == 4
    assert written["bad_fields"] == [{"name": "field_99.jpg", "reason": "cannot be decoded"}]
    assert store.attrs["bad_fields"] == written["bad_fields"]
