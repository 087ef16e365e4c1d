import copy
import json
from pathlib import Path

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


def test_export_without_slides_exports_every_slide_with_cells(results, capsys, tmp_path):
    Path(results.geojson("syn")).unlink(missing_ok=True)
    assert main(["export", "--results", results.root, "--geojson"]) == 0
    assert open(results.geojson("syn")).read().startswith("{")
    assert main(["export", "--results", str(tmp_path / "empty"), "--geojson"]) == 2
    assert "no slide has cells" in capsys.readouterr().err


def test_export_and_missing_stores_fail_with_the_fix(results, capsys):
    with pytest.raises(SystemExit, match="--backbone"):
        main(["export", "--results", results.root, "--slides", "syn", "--hdf5"])
    assert main(["export", "--results", results.root, "--slides", "nope", "--geojson"]) == 2
    assert "nope" in capsys.readouterr().err


def _cytofm(*args: str, cwd=None):
    """The command as a user runs it: ``python -m cytofm`` in a fresh process."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, "-m", "cytofm", *args],
        cwd=cwd or repo,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_version_and_one_front_door():
    from cytofm import __version__

    proc = _cytofm("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"cytofm {__version__}"
    proc = _cytofm("frobnicate")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr  # a usage error


def test_config_check_merges_overlays_as_snakemake_and_names_a_bad_value(tmp_path):
    """`cytofm config check` reads config.yaml and the overlays in order, as Snakemake merges
    them, and builds the plan: a bad value is one line and status 2, never a traceback."""
    import yaml

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"evaluate": {"lora": {"dropout": 1.5}}}))
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(yaml.safe_dump({"evaluate": {"lora": {"dropout": 0.1}}}))
    proc = _cytofm("config", "check", "--configfile", str(bad))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "'evaluate.lora.dropout' must be < 1, got 1.5" in proc.stderr
    proc = _cytofm("config", "check", "--configfile", str(bad), str(fixed))  # the last one wins
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("config ok: ") and "demo_cells" in proc.stdout
    proc = _cytofm("config", "check", "--configfile", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_write_check_and_mlflow_flush_behind_the_same_door(tmp_path):
    proc = _cytofm("config", "write", "--check")
    assert proc.returncode == 0, proc.stderr  # the generated files are current
    (tmp_path / "results" / "mlflow-spool").mkdir(parents=True)
    proc = _cytofm("mlflow", "flush", str(tmp_path / "results"))
    assert proc.returncode == 0 and "sent 0 run(s)" in proc.stderr


def test_overlays_merge_as_snakemake_merges_them():
    from snakemake.utils import update_config

    from cytofm.cli import merge_config

    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1, "e": {"f": {"g": 1}}}
    overlay = {"a": {"c": [3]}, "d": {"x": 1}, "e": {"f": {"h": 2}}, "n": None}
    ours, theirs = merge_config(copy.deepcopy(base), overlay), copy.deepcopy(base)
    update_config(theirs, overlay)
    assert ours == theirs
