"""Reliability through Snakemake: a sheet mixing good and broken slides, sheet errors caught
before any job, kill -9 of every stage followed by a rerun, and what reaches MLflow and the
report.

Paths of these runs hold spaces and shell metacharacters, so a config value that reached a
shell unquoted would break a job or run a command (the PWNED marker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests import corpus as C
from tests.test_reliability import _leaks

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / ".test" / "config.yaml"
pytestmark = pytest.mark.workflow
# a folder name a shell would split and expand: `$(...)`, `;`, `&`, quotes and spaces
NASTY = "runs $(touch PWNED) ; echo 'x' & more"


def _cmd(configs: list[Path], *args: str) -> list[str]:
    exe = Path(sys.executable).with_name("snakemake")
    # targets first: --configfile takes every following word as a config file
    return [str(exe), "--cores", "2", *args, "--configfile", *map(str, configs)]


def snakemake(configs, *args, timeout=900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        _cmd(configs, *args), cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout
    )


# -- a sheet of good and broken slides ---------------------------------------------------

BAD = {  # slide id -> (file writer, rule whose log holds the error, what the message says)
    "zero": (lambda d: C.zero_byte(d / "zero.svs"), "tile", ["is empty (0 bytes)"]),
    "trunc": (lambda d: C.truncated(d / "trunc.svs"), "tile", ["truncated or corrupt"]),
    "pngsvs": (lambda d: C.png_named_svs(d / "png.svs"), "tile", ["named .svs but holds PNG"]),
    "texttiff": (lambda d: C.text_named_tiff(d / "notes.tiff"), "tile", ["holds text"]),
    "nores": (
        lambda d: C.write_tiff_without_resolution(d / "nores.tif", C.smear(seed=5)),
        "tile",
        ["has no resolution", "'mpp' column"],
    ),
    "blank": (lambda d: C.write_svs(d / "blank.svs", C.blank()), "tile", ["no foreground"]),
    "missing": (lambda d: d / "gone.svs", "tile", ["file not found", "Fix the 'path' column"]),
}
GOOD = {
    "case01": lambda d: C.write_svs(d / f"{C.PHI_FILE_STEM}.svs", C.smear(seed=1)),
    "case02": lambda d: C.write_svs(d / "second.svs", C.smear(seed=2)),
}
# material but no nucleated cell (normal in a smear field): zero cells and a warning, no failure
EMPTY = {"nonuclei": lambda d: C.write_svs(d / "ghost.svs", C.smear(nuclei=False))}


def _write_sheet(path: Path, rows: list[tuple[str, Path, str]]) -> Path:
    lines = ["slide_id\tpath\tmpp\tdx"] + [f"{s}\t{p}\t\t{dx}" for s, p, dx in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(folder: Path, sheet: Path, name: str) -> Path:
    cfg = folder / f"{name}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "results": str(folder / name),
                "samples": str(sheet),
                "demo": {"enabled": False},
                "pretrain": {"enabled": False},
                "mlflow": {"tracking_uri": "", "experiment": "reliability"},
            }
        )
    )
    return cfg


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two good slides and every broken kind, run with --keep-going (the default profile's
    setting); and the two good slides alone, for reference."""
    root = tmp_path_factory.mktemp("mixed") / NASTY
    slides = root / "slides"
    slides.mkdir(parents=True)
    good = [(s, make(slides), str(i % 2)) for i, (s, make) in enumerate({**GOOD, **EMPTY}.items())]
    bad = [(s, spec[0](slides), "1") for s, spec in BAD.items()]
    mixed_cfg = _config(root, _write_sheet(root / "mixed.tsv", good + bad), "mixed")
    good_cfg = _config(root, _write_sheet(root / "good.tsv", good), "good")
    runs = {
        "mixed": snakemake([mixed_cfg], "--keep-going"),
        "good": snakemake([good_cfg]),
    }
    return {"root": root, "cfg": mixed_cfg, "good_cfg": good_cfg, "runs": runs, "slides": slides}


def _store_arrays(path: Path) -> dict[str, np.ndarray]:
    from cytofm.store import as_str_array, open_store

    g = open_store(path)
    out = {}
    for name in g.array_keys():
        a = np.asarray(g[name][:])
        out[name] = as_str_array(a) if a.dtype.kind in "OUT" else a
    return out


def _same_arrays(a: Path, b: Path) -> None:
    x, y = _store_arrays(a), _store_arrays(b)
    assert sorted(x) == sorted(y), (a, sorted(x), sorted(y))
    for name in x:
        assert x[name].dtype == y[name].dtype and np.array_equal(x[name], y[name]), (a, name)


def test_every_bad_slide_fails_alone_with_its_message(mixed):
    proc = mixed["runs"]["mixed"]
    assert proc.returncode != 0  # the run reports the failures ...
    res = mixed["root"] / "mixed"
    for slide, (_, rule, phrases) in BAD.items():
        log = (res / "logs" / rule / f"{slide}.log").read_text()
        for phrase in phrases:
            assert phrase in log, (slide, log[-2000:])
        assert f"slide '{slide}'" in log
        assert not (res / "cells" / f"{slide}.zarr").exists()
        # and the message reaches the terminal (the profile shows failed jobs' logs)
        assert phrases[0] in proc.stdout + proc.stderr, slide
    # the missing file is announced while the workflow is built
    assert "not found: missing (" in proc.stderr and "the other slides run" in proc.stderr
    # no partial store is left where a finished one belongs
    for kind in ("tiles", "cells"):
        for store in (res / kind).glob("*.zarr"):
            assert (store / "zarr.json").is_file()
        assert not list((res / kind).glob(".*.tmp-*"))


def test_good_slides_finish_and_equal_a_run_without_the_bad_ones(mixed):
    assert mixed["runs"]["good"].returncode == 0, mixed["runs"]["good"].stderr[-3000:]
    res, ref = mixed["root"] / "mixed", mixed["root"] / "good"
    for slide in GOOD:
        for kind in ("tiles", "cells"):
            _same_arrays(res / kind / f"{slide}.zarr", ref / kind / f"{slide}.zarr")
        assert (res / "qc" / f"{slide}.png").is_file()
    # the report needs every slide, so it waits for the bad ones to be fixed or removed
    assert not (res / "report" / "index.html").exists()
    assert (ref / "report" / "index.html").is_file()


def test_a_slide_without_cells_is_listed_not_fatal(mixed):
    """The good run holds a slide where no nucleus is found: it completes, the slide gets a
    zero-cell store, its job log warns, and the report's detection table lists it."""
    from cytofm.store import open_store

    ref = mixed["root"] / "good"
    assert mixed["runs"]["good"].returncode == 0, mixed["runs"]["good"].stderr[-3000:]
    for slide in EMPTY:
        assert open_store(ref / "cells" / f"{slide}.zarr")["images"].shape[0] == 0
        log = (ref / "logs" / "cells" / f"{slide}.log").read_text()
        assert "no nuclei found" in log and "kept with zero cells" in log
        assert json.loads((ref / "qc" / f"{slide}.cells.json").read_text())["n_cells"] == 0
    table = pd.read_csv(ref / "report" / "tables" / "detection.csv").set_index("slide")
    assert sorted(table.index) == sorted([*GOOD, *EMPTY])
    assert (table.loc[list(EMPTY), "status"] == "no cells found").all()
    assert (table.loc[list(GOOD), "status"] == "ok").all()
    assert (table.loc[list(GOOD), "cells"] > 0).all()
    page = (ref / "report" / "index.html").read_text()
    assert "No cells found in nonuclei" in page


def test_shell_metacharacters_in_paths_run_nothing(mixed):
    assert " $(touch PWNED) ; " in str(mixed["root"])
    for base in (REPO, mixed["root"], mixed["root"].parent, Path.cwd()):
        assert not (base / "PWNED").exists()


def test_fixing_one_slide_reruns_only_that_slide(mixed):
    """Nothing computed is lost: after giving 'nores' its resolution in the sheet, the next
    run plans no job of the good slides and makes the fixed slide's outputs."""
    res = mixed["root"] / "mixed"
    before = {p: p.stat().st_mtime_ns for p in (res / "cells").glob("case*.zarr/zarr.json")}
    assert len(before) == 2
    sheet = mixed["root"] / "mixed.tsv"
    rows = [line.split("\t") for line in sheet.read_text().splitlines()]
    for row in rows:
        if row[0] == "nores":
            row[2] = "0.25"
    sheet.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    plan = snakemake([mixed["cfg"]], "-n")
    assert "slide=nores" in plan.stdout
    assert "slide=case01" not in plan.stdout and "slide=case02" not in plan.stdout
    proc = snakemake([mixed["cfg"]], str(res / "cells" / "nores.zarr"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (res / "cells" / "nores.zarr" / "zarr.json").is_file()
    assert before == {p: p.stat().st_mtime_ns for p in before}


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("duplicate", ["duplicate slide_id ('case01' on lines [2, 4])", "delete the repeated row"]),
        ("spaces", ["invalid slide_id (line 3: 'case 02')", "rename them in the sheet"]),
        ("traversal", ["invalid slide_id (line 3: '../../etc')", "may hold only letters"]),
        ("typo", ["'abnromal'", "misspelling of 'abnormal'", "slide_tasks.dx.classes"]),
    ],
)
def test_sheet_errors_stop_before_any_job_and_touch_nothing(mixed, tmp_path, case, expect):
    root = mixed["root"]
    res = root / "good"
    before = {p: p.stat().st_mtime_ns for p in res.rglob("*") if p.is_file()}
    s1, s2 = mixed["slides"] / f"{C.PHI_FILE_STEM}.svs", mixed["slides"] / "second.svs"
    rows = {
        "duplicate": [("case01", s1, "0"), ("case02", s2, "1"), ("case01", s2, "1")],
        "spaces": [("case01", s1, "0"), ("case 02", s2, "1")],
        "traversal": [("case01", s1, "0"), ("../../etc", s2, "1")],
        "typo": [("case01", s1, "normal"), ("case02", s2, "abnormal")]
        + [(f"x{i}", s2, "abnormal") for i in range(6)]
        + [("x9", s2, "abnromal")],
    }[case]
    sheet = _write_sheet(tmp_path / "sheet.tsv", rows)
    cfg = yaml.safe_load(mixed["good_cfg"].read_text())
    cfg["samples"] = str(sheet)
    if case == "typo":  # a slide-level task on column dx
        cfg["backbones"] = {"hubvit": {"kind": "hub", "arch": "hf-hub:timm/vit_small_patch16_224"}}
        cfg["embed"] = {"sources": ["cells"]}
        cfg["evaluate"] = {"slide_tasks": {"dx": {"label": "dx", "slides": "all"}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake([path])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for phrase in expect:
        assert phrase in out, out[-3000:]
    assert str(sheet) in out
    assert before == {p: p.stat().st_mtime_ns for p in before}


def test_nothing_private_reaches_mlflow_or_the_report(mixed):
    """Slide file names (here a patient's name) and Aperio metadata (date, time, operator,
    barcode, scanner id) stay out of the tracking store, the stores' provenance and the
    report by default. Only the jobs' own log files name slide files (in error messages)."""
    for run in ("good", "mixed"):
        res = mixed["root"] / run
        assert (res / "mlflow.db").is_file() and (res / "tiles" / "case01.zarr").is_dir()
        for part in sorted(res.iterdir()):  # mlflow.db, mlflow-artifacts, stores, qc, ...
            if part.name != "logs":
                assert _leaks(part) == {}, part
    report = mixed["root"] / "good" / "report"
    assert (report / "index.html").is_file()
    assert _leaks(report) == {}


# -- kill -9 of every stage, then rerun --------------------------------------------------

STAGES = ("tile", "cells", "pretrain", "embed", "evaluate")


def _targets(res: Path) -> list[str]:
    return [
        str(res / "eval" / "demo_cells" / "cytofm" / "linear.json"),
        str(res / "features" / "cytofm" / "cells" / "shards" / "00000.json"),
    ]


def _in_flight(res: Path, stage: str) -> Path | None:
    """The output of a job of ``stage`` that has started work and not finished, if any."""
    if stage == "pretrain":
        for ckpt in (res / "pretrain").glob("*/checkpoint.pt"):
            if not (ckpt.parent / "backbone").exists():
                return ckpt.parent / "backbone"
        return None
    # embedding: a dataset's job (rule embed) or a shard of slides' (embed_slides, whose
    # manifest is written last)
    rules = ("embed", "embed_slides") if stage == "embed" else (stage,)
    logs = [(rule, log) for rule in rules for log in sorted((res / "logs" / rule).rglob("*.log"))]
    for rule, log in logs:
        rel = log.relative_to(res / "logs" / rule).with_suffix("")
        out = {
            "tile": res / "tiles" / f"{rel}.zarr",
            "cells": res / "cells" / f"{rel}.zarr",
            "embed": res / "features" / f"{rel}.zarr",
            "embed_slides": res / "features" / rel.parent / "shards" / f"{rel.name}.json",
            "evaluate": res / "eval" / f"{rel}.json",
        }[rule]
        text = log.read_text(errors="replace")
        started = "opened Slide" in text if stage in ("tile", "cells") else "%" in text
        if started and not out.exists():
            return out
    return None


def _kill_during(configs, res: Path, stage: str) -> Path:
    """Start the workflow, SIGKILL its whole process group while a ``stage`` job is mid-way;
    the interrupted job's output."""
    proc = subprocess.Popen(
        _cmd(configs, *_targets(res)),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    deadline = time.monotonic() + 600
    target = None
    while proc.poll() is None and time.monotonic() < deadline:
        target = _in_flight(res, stage)
        if target is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=120)
    assert target is not None, f"no {stage} job was caught mid-way"
    # unlock as a user would after a crash (the lock of the killed run stays behind)
    assert snakemake(configs, "--unlock").returncode == 0
    return target


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill") / NASTY
    root.mkdir(parents=True)
    extra = root / "extra.yaml"
    # more pretraining steps than the tiny config, so a checkpoint exists mid-training, and
    # three pretraining slides, so tiling and cell jobs run side by side to be caught mid-way
    extra.write_text(
        yaml.safe_dump(
            {
                "pretrain": {"optim": {"steps": 12}, "checkpoint_every": 3},
                "demo": {"pretrain_slides": 3},
            }
        )
    )
    out = {"root": root, "kills": {}}
    for name in ("straight", "killed"):
        cfg = root / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({"results": str(root / name)}))
        out[name] = [TINY, extra, cfg]
    proc = snakemake(out["straight"], *_targets(root / "straight"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = root / "killed"
    for stage in STAGES:
        target = _kill_during(out["killed"], res, stage)
        out["kills"][stage] = {"target": target, "exists_after_kill": target.exists()}
    proc = snakemake(out["killed"], *_targets(res))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out["final"] = proc
    return out


def test_kill_leaves_no_output_that_looks_finished(interrupted):
    for stage, info in interrupted["kills"].items():
        assert not info["exists_after_kill"], stage


def test_rerun_after_kills_equals_an_uninterrupted_run(interrupted):
    a, b = interrupted["root"] / "straight", interrupted["root"] / "killed"
    stores = sorted(p.relative_to(a) for k in ("tiles", "cells", "datasets", "features")
                    for p in (a / k).rglob("*.zarr") if (p / "zarr.json").is_file())  # fmt: skip
    assert len(stores) >= 9  # tiles and cells of the 3 training slides, the crops, 2 embeddings
    for rel in stores:
        _same_arrays(a / rel, b / rel)
    (bb_a,) = (a / "pretrain").glob("*/backbone/model.safetensors")
    (bb_b,) = (b / "pretrain").glob("*/backbone/model.safetensors")
    assert bb_a.read_bytes() == bb_b.read_bytes()
    ja = json.loads((a / "eval/demo_cells/cytofm/linear.json").read_text())
    jb = json.loads((b / "eval/demo_cells/cytofm/linear.json").read_text())
    assert ja["results"] == jb["results"]
    # pretraining resumed from its checkpoint rather than starting over
    (log,) = (b / "logs" / "pretrain").glob("*.log")
    assert "resumed from" in log.read_text()
    # leftovers of killed writers were cleared when their outputs were written
    assert not [p for p in b.rglob(".*.tmp-*")]


def test_killed_runs_are_marked_killed_in_mlflow(interrupted):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{interrupted['root'] / 'killed' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cytofm-test")
    found = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in found if r.data.tags.get("cytofm.role") == "invocation"]
    runs = [r for r in found if r not in parents]
    # the killed invocation's parent run was closed as such by the next one's end
    assert "KILLED" in {r.info.status for r in parents}
    assert not [r for r in parents if r.info.status == "RUNNING"]
    status = {}
    for r in runs:
        status.setdefault(r.info.run_name, []).append(r.info.status)
    killed = {name for name, s in status.items() if "KILLED" in s}
    assert len(killed) >= len(STAGES)  # at least one job of each stage was killed
    assert not [r for r in runs if r.info.status == "RUNNING"]  # none left dangling
    for name in killed:
        assert "FINISHED" in status[name], (name, status[name])  # each was redone
