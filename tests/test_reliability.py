"""Bad inputs, damaged files and untrusted files, stage by stage: each gets an error that names
the file (or value) and the fix, and nothing already written is touched.

The corpus is generated here (tests/corpus.py), never committed. The workflow-level checks
(--keep-going with a mixed sheet, kill -9 of every stage, privacy of the tracking store and
report) are in test_reliability_workflow.py.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cytofm.config import (
    CellsConfig,
    DatasetConfig,
    EvalConfig,
    PretrainConfig,
    TaskConfig,
    TilingConfig,
    TrackingConfig,
)
from cytofm.errors import ConfigError, InputDataError, MissingResolutionError
from cytofm.eval.backbones import BackboneSpec
from cytofm.labels import check_labels, suspected_typos
from cytofm.sheet import load_sheet
from cytofm.stages.cells import run_cells
from cytofm.stages.context import JobContext
from cytofm.stages.dataset import run_import
from cytofm.stages.tile import run_tile
from cytofm.store import PatchStoreWriter, StoreError, atomic_group, open_store
from cytofm.wsi.reader import open_slide
from tests import corpus as C

OFF = JobContext(tracking=TrackingConfig(tracking_uri="none"))


def _tile(path, slide_id, out, mpp=None, job=OFF):
    return run_tile(
        path, slide_id, mpp, TilingConfig(), out / f"{slide_id}.zarr", out / f"{slide_id}.png", job
    )


# -- slides -------------------------------------------------------------------------------


def test_zero_byte_slide(tmp_path):
    path = C.zero_byte(tmp_path / "scan.svs")
    with pytest.raises(InputDataError) as err:
        _tile(path, "s1", tmp_path)
    msg = str(err.value)
    assert "'s1'" in msg and str(path) in msg and "empty (0 bytes)" in msg
    assert "copy the slide again" in msg
    assert not (tmp_path / "s1.zarr").exists()


def test_truncated_slide(tmp_path):
    path = C.truncated(tmp_path / "scan.svs")
    with pytest.raises(InputDataError) as err:
        _tile(path, "s1", tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "truncated or corrupt" in msg and "copy it again" in msg
    assert "TIFF" in msg  # what the file still looks like


def test_damaged_tile_data_names_the_slide_and_region(tmp_path):
    """A slide whose header is intact but whose tile data is garbage fails on read, not open."""
    path = C.write_svs(tmp_path / "scan.svs", C.smear(seed=4))
    import tifffile

    with tifffile.TiffFile(path) as tif:  # overwrite the first tiles of both levels
        spans = [(p.dataoffsets[0], p.databytecounts[0]) for p in tif.pages]
    data = bytearray(path.read_bytes())
    for offset, count in spans:
        data[offset : offset + count] = b"\x00" * count
    path.write_bytes(bytes(data))
    with pytest.raises(InputDataError) as err:
        _tile(path, "s1", tmp_path)
    msg = str(err.value)
    assert "'s1'" in msg and str(path) in msg and "reading level" in msg
    assert "truncated or corrupt" in msg


def test_png_renamed_svs(tmp_path):
    path = C.png_named_svs(tmp_path / "scan.svs")
    with pytest.raises(InputDataError) as err:
        open_slide(path, "s1")
    msg = str(err.value)
    assert "named .svs but holds PNG image" in msg and str(path) in msg
    assert "renamed to its type" in msg


def test_text_named_tiff(tmp_path):
    path = C.text_named_tiff(tmp_path / "scan.tiff")
    with pytest.raises(InputDataError) as err:
        open_slide(path, "s1")
    assert "named .tiff but holds text" in str(err.value)
    assert "Point the sample sheet's 'path'" in str(err.value)


def test_tiff_without_resolution_needs_the_sheet(tmp_path):
    path = C.write_tiff_without_resolution(tmp_path / "scan.tif", C.smear())
    with pytest.raises(MissingResolutionError) as err:
        _tile(path, "s1", tmp_path)
    msg = str(err.value)
    assert "'s1'" in msg and "scan.tif" in msg and "'mpp' column" in msg
    # the sheet's value is the fix
    assert _tile(path, "s1", tmp_path, mpp=0.25)["n_tiles"] > 0


def test_empty_foreground(tmp_path):
    path = C.write_svs(tmp_path / "glass.svs", C.blank())
    with pytest.raises(InputDataError) as err:
        _tile(path, "s1", tmp_path)
    msg = str(err.value)
    assert "'s1'" in msg and "no foreground found" in msg and "tiling.od_threshold" in msg
    assert not (tmp_path / "s1.zarr").exists()


def test_no_nuclei_is_recorded_not_fatal(tmp_path, caplog):
    """A field with material but no nucleated cell (normal in a smear) gives a store of zero
    cells, a warning that says what to check, and a QC record; it does not fail the job."""
    path = C.write_svs(tmp_path / "ghost.svs", C.smear(nuclei=False))
    assert _tile(path, "s1", tmp_path)["n_tiles"] > 0  # cytoplasm is foreground
    with caplog.at_level("WARNING"):
        out = run_cells(
            path,
            "s1",
            None,
            tmp_path / "s1.zarr",
            CellsConfig(),
            tmp_path / "s1.cells.zarr",
            tmp_path / "s1.cells.png",
            OFF,
            out_summary=tmp_path / "s1.cells.json",
        )
    assert out["n_cells"] == 0
    for text in (out["warning"], caplog.text):
        assert "'s1'" in text and "no nuclei found" in text and "cells.threshold" in text
    store = open_store(tmp_path / "s1.cells.zarr")
    assert store["images"].shape == (0, 64, 64, 3) and store["coords"].shape == (0, 2)
    assert "no nuclei found" in store.attrs["provenance"]["warning"]
    record = json.loads((tmp_path / "s1.cells.json").read_text())
    assert record["n_cells"] == 0 and record["slide_id"] == "s1" and record["warning"]
    assert (tmp_path / "s1.cells.png").stat().st_size > 0
    assert not list(tmp_path.glob(".s1.cells.zarr.tmp-*"))


def test_a_good_slide_in_the_same_folder_still_works(tmp_path):
    """The corpus writer makes readable slides: the failures above are the files' faults."""
    path = C.write_svs(tmp_path / "good.svs", C.smear())
    assert _tile(path, "s1", tmp_path)["n_tiles"] > 0
    out = run_cells(
        path,
        "s1",
        None,
        tmp_path / "s1.zarr",
        CellsConfig(),
        tmp_path / "s1.cells.zarr",
        tmp_path / "s1.cells.png",
        OFF,
    )
    assert out["n_cells"] >= 10


# -- the sample sheet ------------------------------------------------------------------


def _sheet(tmp_path, rows):
    path = tmp_path / "slides.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


@pytest.mark.parametrize("bad", ["case 01", "../etc/passwd", "..", ".hidden", "a/b", "-x"])
def test_slide_ids_are_validated_before_they_become_paths(tmp_path, bad):
    path = _sheet(tmp_path, [{"slide_id": "ok1", "path": "a.svs"}, {"slide_id": bad, "path": "b"}])
    with pytest.raises(InputDataError) as err:
        load_sheet(path)
    msg = str(err.value)
    assert str(path) in msg and f"line 3: {bad!r}" in msg and "rename them in the sheet" in msg


def test_duplicated_slide_id(tmp_path):
    rows = [{"slide_id": s, "path": f"{i}.svs"} for i, s in enumerate(["a", "b", "a", "c"])]
    path = _sheet(tmp_path, rows)
    with pytest.raises(InputDataError) as err:
        load_sheet(path)
    msg = str(err.value)
    assert "duplicate slide_id ('a' on lines [2, 4])" in msg and str(path) in msg


# -- labels ----------------------------------------------------------------------------


def test_label_typo_is_caught_without_declared_classes():
    labels = ["abnormal"] * 10 + ["normal"] * 12 + ["abnromal"]
    ids = [f"s{i}" for i in range(len(labels))]
    with pytest.raises(InputDataError) as err:
        check_labels(labels, ids, source="column 'dx' of slides.tsv", key="evaluate.slide_tasks.t")
    msg = str(err.value)
    assert "'abnromal' (1 row(s): ['s22'])" in msg and "misspelling of 'abnormal'" in msg
    assert "evaluate.slide_tasks.t.classes" in msg


def test_case_and_separator_variants_are_typos_even_when_common():
    assert suspected_typos(Counter({"ASC-US": 30, "asc us": 25})) == {"asc us": "ASC-US"}


def test_real_class_names_that_look_alike_are_not_typos():
    # Bethesda categories and blood-cell types differ by a letter or two; all are real
    counts = Counter({"LSIL": 40, "HSIL": 5, "ASC-US": 30, "ASC-H": 4, "NILM": 200, "SCC": 2})
    assert suspected_typos(counts) == {}
    counts = Counter({"basophil": 50, "eosinophil": 60, "neutrophil": 70, "monocyte": 40})
    assert suspected_typos(counts) == {}


def test_declared_classes_catch_any_unknown_label_and_suggest():
    labels = ["NILM", "LSIL", "HSlL"]
    with pytest.raises(InputDataError) as err:
        check_labels(
            labels,
            ["a", "b", "c"],
            source="x.csv",
            key="datasets.pap",
            declared=["NILM", "LSIL", "HSIL"],
        )
    msg = str(err.value)
    assert "['HSlL']" in msg and "'HSlL' -> 'HSIL'?" in msg and "rows: ['c']" in msg
    check_labels(
        ["koilocyte"] * 2 + ["koilocytes"] * 20,
        ["r"] * 22,
        source="x",
        key="k",
        declared=["koilocyte", "koilocytes"],
    )


def _png(path: Path, value: int):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((40, 40, 3), value, np.uint8))


def test_dataset_with_a_typod_class_folder(tmp_path):
    for i in range(8):
        _png(tmp_path / "crops" / "koilocyte" / f"{i}.png", 100)
        _png(tmp_path / "crops" / "squamous" / f"{i}.png", 200)
    _png(tmp_path / "crops" / "koilocyt" / "0.png", 100)
    cfg = DatasetConfig(name="pap", path=str(tmp_path / "crops"))
    with pytest.raises(InputDataError) as err:
        run_import(cfg, tmp_path / "pap.zarr", OFF)
    msg = str(err.value)
    assert "'koilocyt'" in msg and "misspelling of 'koilocyte'" in msg
    assert "datasets.pap.classes" in msg and str(tmp_path / "crops") in msg
    assert not (tmp_path / "pap.zarr").exists()


def test_all_nan_image_in_a_collection(tmp_path):
    for i in range(4):
        _png(tmp_path / "crops" / "a" / f"{i}.png", 100)
    C.nan_image(tmp_path / "crops" / "a" / "broken.tif")
    cfg = DatasetConfig(name="pap", path=str(tmp_path / "crops"))
    with pytest.raises(InputDataError) as err:
        run_import(cfg, tmp_path / "pap.zarr", OFF)
    msg = str(err.value)
    assert "broken.tif" in msg and "NaN or infinite" in msg and "Re-export it" in msg
    assert not (tmp_path / "pap.zarr").exists() and not list(tmp_path.glob(".pap.zarr.tmp-*"))


def test_zero_std_normalisation_is_refused_up_front():
    with pytest.raises(ConfigError, match=r"backbones.b.std must be positive"):
        BackboneSpec("b", "timm", arch="vit_small_patch16_224", weights="w.pt", std=[0.2, 0, 0.2])


def test_images_not_finite_after_normalisation_name_the_rows():
    from cytofm.eval.backbones import LoadedBackbone
    from cytofm.eval.features import embed_array

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4))
    model.num_features = 4
    bb = LoadedBackbone(
        model=model, input_size=8, mean=(0.5,) * 3, std=(0.0, 0.0, 0.0), mpp=None, identity={}
    )
    images = np.full((3, 8, 8, 3), 128, np.uint8)
    images[1] = 0
    with pytest.raises(InputDataError) as err:
        embed_array(bb, images, batch_size=2, desc="embed x cells/s1")
    assert "embed x cells/s1" in str(err.value) and "not finite after normalisation" in str(
        err.value
    )


# -- evaluation inputs -----------------------------------------------------------------


def _toy_dataset(path: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(n, i) for i, n in enumerate(counts.values())])
    images = rng.integers(0, 255, (len(labels), 16, 16, 3), dtype=np.uint8)
    with atomic_group(path) as g:
        w = PatchStoreWriter(
            g, 16, 64, {"labels": (np.int16, ()), "groups": (str, ()), "ids": (str, ())}
        )
        w.append(
            images,
            labels=labels.astype(np.int16),
            groups=np.full(len(labels), ""),
            ids=np.array([f"i{i}" for i in range(len(labels))]),
        )
        w.close()
        g.attrs.update({"classes": list(counts), "mpp": 0.5})
    return path


def _features(src: Path, path: Path, counts: dict[str, int]) -> Path:
    labels = np.concatenate([np.full(n, i) for i, n in enumerate(counts.values())])
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(len(labels), 8)) + labels[:, None] * 3
    with atomic_group(path) as g:
        g.create_array("features", data=feats.astype(np.float16))
        g.attrs.update({"provenance": {"stage": "embed"}})
    return path


def _evaluate_toy(tmp_path: Path, counts: dict[str, int], protocol: str, **task) -> Path:
    """run_evaluate of ``protocol`` on a toy dataset with ``counts`` images per class."""
    from cytofm.stages.evaluate import run_evaluate

    ds = _toy_dataset(tmp_path / "ds.zarr", counts)
    fs = _features(ds, tmp_path / "f.zarr", counts)
    out = tmp_path / f"{protocol}.json"
    run_evaluate(
        TaskConfig(name="t", dataset="ds", protocols=(protocol,), seeds=(0,), **task),
        EvalConfig(bootstrap=20),
        protocol,
        BackboneSpec("b", "random", arch="vit_small_patch16_224"),
        ds,
        out,
        features_store=fs,
        job=OFF,
    )
    return out


def test_class_with_fewer_than_k_images_skips_that_k_with_the_reason(tmp_path):
    out = _evaluate_toy(tmp_path, {"common": 40, "rare": 9}, "fewshot", shots=(1, 2, 16))
    result = json.loads(out.read_text())
    assert [b["shots"] for b in result["results"]] == [1, 2]
    (skip,) = result["skipped"]
    assert skip["shots"] == 16
    assert "'rare' (" in skip["reason"] and "fewer than 16 training examples" in skip["reason"]
    assert "remove 16 from evaluate.tasks.t.shots" in skip["reason"]


def test_class_too_small_for_a_split_is_an_error(tmp_path):
    with pytest.raises(InputDataError) as err:
        _evaluate_toy(tmp_path, {"common": 40, "rare": 2}, "linear")
    msg = str(err.value)
    assert "task 't'" in msg and "'rare' (2 images; none in" in msg and "Add images" in msg
    assert not (tmp_path / "linear.json").exists()


# -- stores ----------------------------------------------------------------------------


@pytest.fixture
def cell_store(tmp_path):
    path = C.write_svs(tmp_path / "good.svs", C.smear())
    _tile(path, "s1", tmp_path)
    run_cells(
        path,
        "s1",
        None,
        tmp_path / "s1.zarr",
        CellsConfig(chunk=4),
        tmp_path / "s1.cells.zarr",
        tmp_path / "s1.cells.png",
        OFF,
    )
    return tmp_path / "s1.cells.zarr"


def test_corrupt_chunk_names_the_store_and_the_fix(cell_store, tmp_path):
    from cytofm.stages.embed import run_embed

    bad = C.copy_store(cell_store, tmp_path / "bad.zarr")
    C.corrupt_chunk(bad)
    with pytest.raises(StoreError) as err:
        run_embed(
            BackboneSpec(
                "r",
                "random",
                arch="vit_small_patch16_224",
                model_args={"embed_dim": 32, "depth": 1, "num_heads": 2},
            ),
            bad,
            tmp_path / "f.zarr",
            device="cpu",
            job=OFF,
        )
    msg = str(err.value)
    assert str(bad) in msg and "reading array 'images' failed" in msg
    assert "Delete it and rerun snakemake" in msg
    assert not (tmp_path / "f.zarr").exists()


def test_corrupt_metadata_names_the_store(cell_store, tmp_path):
    bad = C.copy_store(cell_store, tmp_path / "bad.zarr")
    C.corrupt_metadata(bad)
    with pytest.raises(StoreError, match=r"bad.zarr is corrupt: its zarr.json cannot be parsed"):
        open_store(bad)


def test_partial_store_is_never_a_store(tmp_path):
    """A writer killed mid-way leaves only a hidden temporary folder, never the output; the
    next write clears it."""
    final = tmp_path / "x.zarr"
    with pytest.raises(RuntimeError), atomic_group(final) as g:
        g.create_array("a", data=np.arange(3))
        raise RuntimeError("killed")
    assert not final.exists()
    # what SIGKILL leaves: the temporary folder (no cleanup runs)
    stale = tmp_path / ".x.zarr.tmp-deadbeef"
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not a cytofm zarr store"):
        open_store(final)
    with atomic_group(final) as g:
        g.create_array("a", data=np.arange(3))
    assert not stale.exists() and open_store(final)["a"][:].tolist() == [0, 1, 2]


# -- untrusted files -------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_in_a_checkpoint_is_refused(tmp_path):
    """checkpoint.pt is read with weights_only=True: the payload never runs."""
    from cytofm.ssl.data import PatchSource
    from cytofm.ssl.train import Trainer

    marker = tmp_path / "PWNED"
    store = _toy_dataset(tmp_path / "ds.zarr", {"a": 8, "b": 8})
    cfg = PretrainConfig().updated(
        {
            "model.model_args": {"embed_dim": 32, "depth": 1, "num_heads": 2},
            "crops.global_size": 16,
            "crops.local_size": 8,
            "optim.batch_size": 4,
            "optim.steps": 2,
        }
    )
    out = tmp_path / "pretrain"
    out.mkdir()
    torch.save({"step": 1, "student": _Payload(marker)}, out / "checkpoint.pt")
    trainer = Trainer(cfg, PatchSource([store]), out)
    with pytest.raises(InputDataError) as err:
        trainer.load_checkpoint()
    msg = str(err.value)
    assert "checkpoint.pt cannot be loaded" in msg and "weights_only=True" in msg
    assert "start pretraining from scratch" in msg
    assert not marker.exists()
    # the loaded module never unpickled it either: plain pickle.load would have run it
    with open(out / "checkpoint.pt", "rb") as fh:
        assert fh.read(2) == b"PK"  # torch's zip container, payload inside


def test_malicious_pickle_as_backbone_weights_is_refused(tmp_path):
    from cytofm.eval.backbones import load_backbone_spec

    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": _Payload(marker)}, fh)
    spec = BackboneSpec("evil", "timm", arch="vit_small_patch16_224", weights=str(path))
    with pytest.raises(InputDataError, match="weights_only"):
        load_backbone_spec(spec)
    assert not marker.exists()


def test_workflow_never_runs_a_shell_with_config_values():
    """Rules run Python scripts (no shell: directives); the one external command (torchrun)
    is an argument list, so no config value is ever parsed by a shell."""
    repo = Path(__file__).resolve().parents[1]
    rules = [repo / "Snakefile", *sorted((repo / "workflow" / "rules").glob("*.smk"))]
    for rule in rules:
        text = rule.read_text()
        assert "shell:" not in text and "shell(" not in text, rule
    for py in [*(repo / "cytofm").rglob("*.py"), *(repo / "workflow" / "scripts").glob("*.py")]:
        text = py.read_text()
        assert "shell=True" not in text and "os.system" not in text and "os.popen" not in text, py


# -- privacy ---------------------------------------------------------------------------

SECRETS = [C.PHI_FILE_STEM, *(v for k, v in C.PHI.items() if k != "Filename"), "DOE_JANE"]


def _leaks(root: Path) -> dict[str, list[str]]:
    """secret -> files at or under ``root`` (the MLflow database, artifacts...) holding it."""
    found: dict[str, list[str]] = {}
    for f in [root] if root.is_file() else root.rglob("*"):
        if not f.is_file():
            continue
        data = f.read_bytes()
        if f.suffix == ".db":  # the database: every text value of every table
            con = sqlite3.connect(f)
            tables = [
                r[0] for r in con.execute("select name from sqlite_master where type='table'")
            ]
            data = "\n".join(
                str(row) for t in tables for row in con.execute(f'select * from "{t}"')
            ).encode()
            con.close()
        for s in SECRETS:
            if s.encode() in data:
                found.setdefault(s, []).append(str(f.relative_to(root.parent)))
    return found


def test_slide_names_and_vendor_metadata_stay_out_of_mlflow_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    slide = C.write_svs(tmp_path / "in" / f"{C.PHI_FILE_STEM}.svs", C.smear())
    with open_slide(slide, "case01") as s:  # the file does carry them
        assert s.properties()["aperio.Barcode"] == C.PHI["Barcode"]
    private = tmp_path / "private"
    job = JobContext.create(
        {"results": str(private), "mlflow": {"tracking_uri": ""}},
        "tile",
        {"slide": "case01"},
        {"slide": str(slide)},
    )
    _tile(slide, "case01", private, job=job)
    assert (private / "mlflow.db").is_file()
    assert _leaks(private) == {}  # neither MLflow nor the tile store's attributes
    # opting in logs them: the scan above can see them when they are there
    shared = tmp_path / "shared"
    job = JobContext.create(
        {"results": str(shared), "mlflow": {"log_slide_paths": True, "log_slide_metadata": True}},
        "tile",
        {"slide": "case01"},
        {"slide": str(slide)},
    )
    _tile(slide, "case01", shared, job=job)
    leaks = _leaks(shared)
    assert set(leaks) == set(SECRETS), leaks
    assert any("slide_properties.json" in f for f in leaks[C.PHI["Barcode"]])


def test_runs_of_killed_jobs_are_closed_when_the_job_reruns(tmp_path, monkeypatch):
    """A job killed with SIGKILL leaves its MLflow run RUNNING; the job's next run marks it
    KILLED when its process is gone, and leaves a live process's run alone."""
    import os
    import socket
    import subprocess

    from mlflow.tracking import MlflowClient

    from cytofm.tracking import job_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("cytofm")
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=30)
    host = socket.gethostname()
    runs = {
        name: client.create_run(exp, run_name="tile:s1", tags={"cytofm.host": h, "cytofm.pid": p})
        for name, h, p in (
            ("dead", host, str(dead.pid)),
            ("live", host, str(os.getpid())),
            ("elsewhere", "another-node", str(dead.pid)),
        )
    }
    with job_run("tile", tracking=TrackingConfig(tracking_uri=uri), run_name="tile:s1"):
        pass
    status = {k: client.get_run(r.info.run_id).info.status for k, r in runs.items()}
    assert status == {"dead": "KILLED", "live": "RUNNING", "elsewhere": "RUNNING"}
