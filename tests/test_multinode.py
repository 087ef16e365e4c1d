"""Pretraining across nodes: two torchrun "nodes" of two CPU processes each (gloo, a c10d
rendezvous on 127.0.0.1) give the weights one process gives with the same global batch and
seed, and a checkpoint written by four processes resumes in one on the same data order."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cytofm.config import PretrainConfig
from cytofm.stages.context import JobContext
from tests.test_ssl_train import TINY

pytestmark = pytest.mark.slow_ok

# Stochastic depth and KoLeo are per process (see cytofm.ssl.train): off, so the runs can be
# identical; float sums over 4 processes differ from one process's in the last bits, hence
# the tolerance.
CFG = TINY.updated(
    {
        "model.drop_path": 0.0,
        "loss.koleo_weight": 0.0,
        "optim.steps": 4,
        "checkpoint_every": 2,
        "probe.dataset": "",
        "num_workers": 0,
    }
)
RTOL, ATOL = 1e-4, 1e-6

STOP_AT_2 = """
import cytofm.ssl.train as train
fit = train.Trainer.fit
train.Trainer.fit = lambda self, *a, **k: fit(self, *a, **{**k, "stop_at": 2})
"""


@pytest.fixture(scope="module")
def store(random_patches):
    return random_patches


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, hook: str | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": "none"}
    if hook:
        (tmp_path / "hook").mkdir(exist_ok=True)
        (tmp_path / "hook" / "sitecustomize.py").write_text(hook)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "hook"), env.get("PYTHONPATH", "")])
    return env


def _single(store, out: Path, stop_at=None) -> dict:
    """One process, in this process."""
    from cytofm.ssl.data import PatchSource
    from cytofm.ssl.train import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker runs; restored for the tests after
    try:
        trainer = Trainer(CFG, PatchSource([store]), out, device="cpu")
        trainer.load_checkpoint()
        trainer.fit(stop_at=stop_at)
    finally:
        torch.set_num_threads(threads)
    return {k: v.clone() for k, v in trainer.student.state_dict().items()}


def _launch_nodes(store, tmp_path: Path, nodes: int, per_node: int, hook=None) -> Path:
    """``nodes`` torchrun launches of ``per_node`` workers meeting at one rendezvous, as srun
    starts them on a cluster; returns the model folder."""
    from cytofm.ssl.distributed import torchrun_command
    from cytofm.stages.pretrain import launch_args

    out = tmp_path / "model"
    tmp_path.mkdir(parents=True, exist_ok=True)
    args = launch_args(CFG, [store], out, None, JobContext(results_dir=tmp_path))
    (tmp_path / "args.json").write_text(json.dumps(args))
    endpoint = f"127.0.0.1:{_port()}"
    cmd = torchrun_command(
        tmp_path / "args.json", per_node, nnodes=nodes, endpoint=endpoint, rdzv_id="test"
    )
    procs = [
        subprocess.Popen(
            cmd,
            env=_env(tmp_path, hook),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(nodes)
    ]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, text in zip(procs, logs, strict=True):
        assert p.returncode == 0, text[-4000:]
    if nodes > 1:  # each worker's records name its node and global rank
        assert any("[node " in t and "rank 3]" in t for t in logs), logs[0][-2000:]
    return out


def _close(a: dict, b: dict) -> None:
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=RTOL, atol=ATOL), (k, (a[k] - b[k]).abs().max())


def test_two_nodes_of_two_processes_train_the_weights_of_one(store, tmp_path):
    one = _single(store, tmp_path / "single")
    out = _launch_nodes(store, tmp_path / "multi", nodes=2, per_node=2)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4
    _close(one, state["student"])
    assert (out / "backbone" / "model.safetensors").is_file()
    assert not (out / ".launch").exists()  # the launch files are cleared after success
    record = json.loads((out / "backbone" / "config.json").read_text())["provenance"]
    assert record["distributed"] == {
        "processes": 4,
        "nodes": 2,
        "resumed_with_processes": None,
        "same_weights_for_any_split": True,
        "per_process_randomness": [],
    }
    runtime = record["step_runtime"]  # what ran where, for a reader of the provenance
    assert runtime["views"] == "made in batches on cpu" and runtime["fused_attention"]
    assert not runtime["compiled"] and runtime["autocast"] == "fp32"


def test_a_four_process_checkpoint_resumes_in_one_on_the_same_data_order(store, tmp_path):
    from cytofm.ssl.data import PatchSource
    from cytofm.ssl.train import StepBatches, Trainer

    # the global batch of a step is the same however it is split
    source = PatchSource([store])
    t = Trainer(CFG, source, tmp_path / "probe", device="cpu")
    whole = StepBatches(source, t.masker, CFG, 0, 1, t.steps_per_epoch)
    parts = [StepBatches(source, t.masker, CFG, r, 4, t.steps_per_epoch) for r in range(4)]
    for step in (2, 3):
        assert np.array_equal(whole.indices(step), np.concatenate([p.indices(step) for p in parts]))
        batch = whole[step]
        g, _ = t.views(batch.patches, batch.views)
        m = batch.masks
        shares = [(*t.views(s.patches, s.views), s.masks) for s in (p[step] for p in parts)]
        per = len(g) // 2 // 4  # two global views, view-major
        for v in range(2):
            got = torch.cat([s[0][v * per : (v + 1) * per] for s in shares])
            assert torch.equal(g[v * len(g) // 2 : (v + 1) * len(g) // 2], got)
            assert torch.equal(
                m[v * len(m) // 2 : (v + 1) * len(m) // 2],
                torch.cat([s[2][v * per : (v + 1) * per] for s in shares]),
            )
    # 4 processes (one node) train 2 of the 4 steps; one process resumes and finishes
    uninterrupted = _single(store, tmp_path / "single")
    out = _launch_nodes(store, tmp_path / "four", nodes=1, per_node=4, hook=STOP_AT_2)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    resumed = _single(store, out)
    _close(uninterrupted, resumed)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["world"] == 1


def test_a_multi_node_job_outside_slurm_is_refused_with_the_fix(monkeypatch):
    from cytofm.errors import CytofmError
    from cytofm.ssl.distributed import slurm_command

    monkeypatch.delenv("SLURM_JOB_NUM_NODES", raising=False)
    with pytest.raises(CytofmError, match="resources.pretrain.nodes: 1"):
        slurm_command(2, 4, "args.json", 29400)


def test_srun_starts_one_torchrun_per_node_meeting_on_the_first(monkeypatch, tmp_path):
    from cytofm.ssl.distributed import slurm_command

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/sh\necho gpu-a01\necho gpu-a02\n")
    (fake / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu-a[01-02]")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    cmd = slurm_command(2, 4, "out/.launch/args.json", 29400)
    assert cmd[:5] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                       "--kill-on-bad-exit=1"]  # fmt: skip
    assert cmd[5:8] == [sys.executable, "-m", "torch.distributed.run"]
    for flag in ("--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d",
                 "--rdzv-endpoint=gpu-a01:29400", "--rdzv-id=4242"):  # fmt: skip
        assert flag in cmd
    assert cmd[-3:] == ["-m", "cytofm.stages.launch", "out/.launch/args.json"]


def test_nodes_is_a_pretraining_resource_only():
    from cytofm.config import ResourcesConfig, from_mapping
    from cytofm.errors import ConfigError

    with pytest.raises(ConfigError, match="'nodes' is read for pretrain only"):
        from_mapping(ResourcesConfig, {"embed": {"nodes": 2}}, "resources")
    assert PretrainConfig().rdzv_port == 29400 and PretrainConfig().env == {}
