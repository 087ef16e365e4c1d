import json

import numpy as np
import pytest

from cytofm.cli import main
from cytofm.config import CellsConfig, TilingConfig
from cytofm.paths import Paths
from cytofm.stages.cells import run_cells
from cytofm.stages.embed import write_feature_store
from cytofm.stages.tile import run_tile
from cytofm.store import open_store


@pytest.fixture(scope="module")
def results(synthetic_slide, tmp_path_factory):
    """A results folder laid out as the workflow's, for one slide and one backbone."""
    path, _ = synthetic_slide
    p = Paths(str(tmp_path_factory.mktemp("cli") / "results"))
    run_tile(path, "syn", None, TilingConfig(tile_px=256), p.tiles("syn"), p.qc("syn"))
    run_cells(path, "syn", None, p.tiles("syn"), CellsConfig(patch_px=32), p.cells("syn"),
              p.cells_gallery("syn"))  # fmt: skip
    cells = open_store(p.cells("syn"))
    feats = np.random.default_rng(0).normal(size=(cells["coords"].shape[0], 4))
    write_feature_store(p.features("toy", "cells", "syn"), feats, cells, {"stage": "embed"}, "toy")
    return p


def test_inspect_shows_arrays_and_provenance(results, capsys):
    assert main(["inspect", results.cells("syn")]) == 0
    out = capsys.readouterr().out
    assert "cells store, schema version 2" in out
    assert "images" in out and "coords" in out and "provenance.stage: cells" in out


def test_export_writes_what_the_rules_write(results, capsys):
    argv = ["export", "--results", results.root, "--slides", "syn", "--geojson", "--hdf5"]
    assert main([*argv, "--backbone", "toy"]) == 0
    doc = json.loads(open(results.geojson("syn")).read())
    n = open_store(results.cells("syn"))["coords"].shape[0]
    assert sum(f["properties"]["objectType"] == "detection" for f in doc["features"]) == n
    for layout in ("trident", "stamp"):
        assert open(results.features_h5(layout, "toy", "cells", "syn"), "rb").read(4) == b"\x89HDF"


def test_export_and_missing_stores_fail_with_the_fix(results, capsys):
    with pytest.raises(SystemExit, match="--backbone"):
        main(["export", "--results", results.root, "--slides", "syn", "--hdf5"])
    assert main(["export", "--results", results.root, "--slides", "nope", "--geojson"]) == 2
    assert "nope" in capsys.readouterr().err
