"""Shared fixtures: tiny synthetic slides with ground truth, and the real data when present."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cytofm.synthetic.slide import class_mix, render_slide_canvas, write_pyramidal_tiff

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CYTOFM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    """Unit tests do not write MLflow runs unless a test sets its own URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "none")


@pytest.fixture(autouse=True)
def _no_slurm_probe(monkeypatch, request):
    """On a machine with SLURM's client tools but no controller, the SLURM executor plugin
    waits on `scontrol` for ~10 s at every `snakemake` start; tests that do not test SLURM
    point it at an empty config so it fails at once (tests marked `slurm` keep the real one)."""
    if request.node.get_closest_marker("slurm") is None:
        monkeypatch.setenv("SLURM_CONF", "/dev/null")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on localhost (SQLite backend, proxied artifacts); its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(exe), "server",
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = open(root / "server.log", "w")
    # no job runner: its ten polling processes would run beside every later test
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)  # the server and the uvicorn workers it started
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real third-party data not available: {path} (only in CI and dev checkouts)")
    return path


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory):
    """A 2048x2048 slide at 0.25 um/px (0.26 mm2) with ~35 cells of an abnormal mix."""
    rng = np.random.default_rng(11)
    canvas = render_slide_canvas(
        2048,
        2048,
        0.25,
        class_mix(True, 0.2),
        cells_per_mm2=130,
        cluster_prob=0.25,
        debris_per_mm2=60,
        rng=rng,
    )
    path = tmp_path_factory.mktemp("slides") / "synthetic.tif"
    write_pyramidal_tiff(path, canvas.rgb, 0.25)
    return path, canvas


@pytest.fixture(scope="session")
def random_patches(tmp_path_factory):
    """A patch store of 40 random 40 px patches: what the pretraining tests train on."""
    from cytofm.store import PatchStoreWriter, atomic_group

    path = tmp_path_factory.mktemp("ssl") / "cells.zarr"
    rng = np.random.default_rng(0)
    with atomic_group(path) as g:
        w = PatchStoreWriter(g, 40, 16, {})
        w.append(rng.integers(0, 255, (40, 40, 40, 3), dtype=np.uint8))
        w.close()
    return path
