"""iBOT training: resume equivalence, DDP on CPU (gloo), NaN guard, export/load."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from cytofm.config import PretrainConfig
from cytofm.ssl.data import PatchSource
from cytofm.ssl.export import export_backbone, load_backbone
from cytofm.ssl.train import NonFiniteLossError, Trainer

TINY = PretrainConfig().updated(
    {
        "model.model_args": {"embed_dim": 32, "depth": 1, "num_heads": 2},
        "model.patch_size": 8,
        "model.drop_path": 0.1,
        "crops.global_size": 32,
        "crops.local_size": 16,
        "crops.n_local": 2,
        "heads.out_dim": 64,
        "heads.patch_out_dim": 64,
        "heads.hidden_dim": 32,
        "heads.bottleneck_dim": 16,
        "optim.batch_size": 8,
        "optim.steps": 6,
        "optim.warmup_steps": 2,
        "teacher.temp_warmup_steps": 2,
        "checkpoint_every": 3,
        "log_every": 1,
        "loss.koleo_weight": 0.1,
    }
)


@pytest.fixture(scope="module")
def store(random_patches):
    return random_patches


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.teacher.state_dict().items()} | {
        "s." + k: v.detach().clone() for k, v in trainer.student.state_dict().items()
    }


def test_resume_gives_identical_weights(store, tmp_path):
    cfg = TINY
    straight = Trainer(cfg, PatchSource([store]), tmp_path / "a")
    straight.fit()
    assert straight.step == 6

    first = Trainer(cfg, PatchSource([store]), tmp_path / "b")
    first.fit(stop_at=3)  # "killed" after step 3 (checkpoint_every=3)
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    resumed = Trainer(cfg, PatchSource([store]), tmp_path / "b")
    assert resumed.load_checkpoint() and resumed.step == 3
    resumed.fit()
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_changes_weights_and_logs_monitors(store, tmp_path):
    cfg = TINY
    tr = Trainer(cfg, PatchSource([store]), tmp_path)
    before = _weights(tr)
    logged = []

    class Logger:
        def log_metrics(self, metrics, step=None):
            logged.append((step, dict(metrics)))

    last = tr.fit(logger=Logger())
    after = _weights(tr)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert [s for s, _ in logged] == [1, 2, 3, 4, 5, 6]
    for key in (
        "loss",
        "loss_dino",
        "loss_ibot",
        "lr",
        "teacher_temp",
        "teacher_momentum",
        "images_per_s",
        "teacher_entropy",
        "teacher_cls_effective_rank",
    ):
        assert key in last and np.isfinite(last[key]), key
    # the last layer is frozen for the first epoch (5 steps of 8 on 40 patches)
    assert tr.freeze_steps == 5


def test_last_layer_frozen_during_first_steps(store, tmp_path):
    cfg = TINY.updated({"optim.freeze_last_layer_steps": 6})
    tr = Trainer(cfg, PatchSource([store]), tmp_path)
    w0 = tr.student.cls_head.last_layer.parametrizations.weight.original1.detach().clone()
    tr.fit()
    assert torch.equal(w0, tr.student.cls_head.last_layer.parametrizations.weight.original1)


def test_nan_guard_keeps_last_good_checkpoint(store, tmp_path, monkeypatch):
    cfg = TINY
    tr = Trainer(cfg, PatchSource([store]), tmp_path)
    tr.fit(stop_at=3)
    good = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    original = tr.dino_loss.forward
    monkeypatch.setattr(tr.dino_loss, "forward", lambda *a: original(*a) * float("nan"))
    with pytest.raises(NonFiniteLossError, match="step 3.*last good checkpoint"):
        tr.fit()
    kept = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert kept["step"] == good["step"] == 3


def test_changed_config_starts_over(store, tmp_path):
    Trainer(TINY, PatchSource([store]), tmp_path).fit(stop_at=3)
    other = Trainer(TINY.updated({"optim.lr": 1e-3}), PatchSource([store]), tmp_path)
    assert not other.load_checkpoint() and other.step == 0
    assert (tmp_path / "checkpoint.pt.stale").is_file()


def test_export_loads_in_timm_strictly(store, tmp_path):
    cfg = TINY
    tr = Trainer(cfg, PatchSource([store]), tmp_path)
    tr.fit(stop_at=2)
    vit = tr.teacher.backbone.vit
    export_backbone(
        vit,
        tmp_path / "bb",
        arch=cfg.model.arch,
        model_args=cfg.model.model_args,
        img_size=32,
        patch_size=8,
        mean=tr.mean,
        std=tr.std,
        patch_mpp=0.75,
        patch_um=30.0,
    )
    model = load_backbone(tmp_path / "bb")
    x = torch.randn(3, 3, 32, 32)
    vit.eval()
    assert torch.allclose(model(x), vit(x), atol=1e-6)
    assert model.pretrained_cfg["mean"] == tuple(tr.mean)
    assert "mask_token" not in load_file(str(tmp_path / "bb" / "model.safetensors"))
    # a file with an extra or a missing key is refused, not silently half-loaded
    state = load_file(str(tmp_path / "bb" / "model.safetensors"))
    state["unexpected.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bb" / "model.safetensors"))
    with pytest.raises(RuntimeError, match="unexpected"):
        load_backbone(tmp_path / "bb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, store, out, results):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    tr = Trainer(TINY.updated({"optim.steps": 3}), PatchSource([store]), out, device="cpu")
    last = tr.fit()
    results[rank] = {
        "loss": last["loss"],
        "student": {k: v.clone() for k, v in tr.student.state_dict().items()},
        "teacher": {k: v.clone() for k, v in tr.teacher.state_dict().items()},
        "center": tr.dino_loss.center.clone(),
    }
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_gloo(store, tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), store, tmp_path, results), nprocs=2, join=True)
    r0, r1 = results[0], results[1]
    assert np.isfinite(r0["loss"]) and np.isfinite(r1["loss"])
    for k in r0["student"]:  # gradients were averaged: both ranks hold the same weights
        assert torch.allclose(r0["student"][k], r1["student"][k]), k
    for k in r0["teacher"]:
        assert torch.allclose(r0["teacher"][k], r1["teacher"][k]), k
    assert torch.allclose(r0["center"], r1["center"])
    assert (tmp_path / "checkpoint.pt").is_file()


JOB_SCRIPT = """
import json, sys
from cytofm.log import setup_logging
setup_logging(sys.argv[2])  # as a Snakemake job's script does
from cytofm.config import PretrainConfig, from_mapping
from cytofm.stages.context import JobContext
from cytofm.stages.pretrain import run_pretrain
a = json.loads(open(sys.argv[1]).read())
run_pretrain(from_mapping(PretrainConfig, a["cfg"]), [a["store"]], a["out"],
             job=JobContext(results_dir=a["results"]), nproc=2)
"""

RANK1_FAILS = """
import os
if os.environ.get("RANK") == "1":  # a torchrun worker of rank 1 only
    import cytofm.ssl.train as train
    def _fail(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory (injected on this rank)")
    train.Trainer.train_step = _fail
"""


def _run_job(store, tmp_path, hook: str | None):
    import json
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": "none"}
    if hook:
        (tmp_path / "hook").mkdir()
        (tmp_path / "hook" / "sitecustomize.py").write_text(hook)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "hook"), env.get("PYTHONPATH", "")])
    args = {
        "cfg": TINY.updated({"optim.steps": 2, "probe.dataset": ""}).to_dict(),
        "store": str(store),
        "out": str(tmp_path / "model"),
        "results": str(tmp_path),
    }
    (tmp_path / "args.json").write_text(json.dumps(args))
    (tmp_path / "job.py").write_text(JOB_SCRIPT)
    log = tmp_path / "logs" / "pretrain.log"
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "job.py"), str(tmp_path / "args.json"), str(log)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    return proc, log.read_text()


def test_torchrun_workers_log_to_the_jobs_log(store, tmp_path):
    """Under torchrun, both workers' records land in the job's log file, tagged by rank, and
    nothing is left on the console."""
    proc, log = _run_job(store, tmp_path, hook=None)
    assert proc.returncode == 0, log[-3000:]
    assert "[rank 0]" in log and "[rank 1]" in log
    assert "[rank" not in proc.stdout + proc.stderr


def test_a_failing_rank_ends_the_job_with_its_message(store, tmp_path):
    proc, log = _run_job(store, tmp_path, hook=RANK1_FAILS)
    assert proc.returncode != 0
    assert "pretraining failed on rank 1 of 2" in log
    assert "CUDA out of memory (injected on this rank)" in log
    assert not (tmp_path / "model" / "backbone").exists()


def test_torchrun_launch_from_the_stage(store, tmp_path, monkeypatch):
    """``pretrain.nproc: 2`` runs the stage under torchrun (2 CPU processes, gloo)."""
    from cytofm.stages.context import JobContext
    from cytofm.stages.pretrain import run_pretrain

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = TINY.updated({"optim.steps": 2, "probe.dataset": ""})
    out = tmp_path / "model"
    summary = run_pretrain(cfg, [store], out, job=JobContext(results_dir=tmp_path), nproc=2)
    assert summary == {"nproc": 2, "nodes": 1}
    assert (out / "backbone" / "model.safetensors").is_file()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2


@pytest.mark.parametrize(
    ("setting", "job_gpus", "visible", "expected"),
    [
        ("auto", 0, 0, 1),  # CPU job
        ("auto", 1, 0, 1),  # asked for a GPU, none visible: one CPU process
        ("auto", 4, 8, 4),  # local box with 8 GPUs, job granted 4
        ("auto", 4, 4, 4),  # SLURM: CUDA_VISIBLE_DEVICES holds the job's 4
        ("auto", 4, 2, 2),  # fewer visible than asked: as many as exist (and a warning)
        (2, 0, 0, 2),  # explicit count wins (gloo on CPU)
    ],
)
def test_resolve_nproc(setting, job_gpus, visible, expected):
    from cytofm.ssl.distributed import resolve_nproc

    assert resolve_nproc(setting, job_gpus, visible) == expected


@pytest.mark.parametrize("setting", [0, "all", True])
def test_resolve_nproc_refuses_bad_values(setting):
    from cytofm.errors import CytofmError
    from cytofm.ssl.distributed import resolve_nproc

    with pytest.raises(CytofmError, match="pretrain.nproc"):
        resolve_nproc(setting, 1, 1)


def test_loader_workers_make_the_same_batches(store, tmp_path):
    """Batches from DataLoader worker processes equal the ones made in the training process
    (a pure function of seed, step and rank), so the worker count changes no result."""
    cfg = TINY.updated({"probe.dataset": "", "num_workers": 2})
    tr = Trainer(cfg, PatchSource([store]), tmp_path / "out")
    assert tr.num_workers == 2
    for step, batch in zip(range(1, 5), tr.loader(1, 5), strict=True):
        for got, want in zip(batch, tr.make_batch(step), strict=True):
            assert torch.equal(got, want)


def test_loader_workers_auto():
    from cytofm.ssl.train import loader_workers

    assert loader_workers("auto", torch.device("cpu")) == 0
    assert loader_workers(3, torch.device("cpu")) == 3
    assert 1 <= loader_workers("auto", torch.device("cuda"), nproc=64) <= 8
    assert 1 <= loader_workers("auto", torch.device("cuda"), most=1) == 1


def test_attention_kernel_check_and_compile_only_on_cuda(store, tmp_path, caplog):
    """timm's blocks call scaled_dot_product_attention (checked, not assumed); compile is a
    CUDA switch that the CPU ignores with a note, and the provenance says what ran."""
    import logging

    from cytofm.ssl.train import fused_attention

    with caplog.at_level(logging.INFO, logger="cytofm.ssl.train"):
        tr = Trainer(TINY.updated({"compile": True}), PatchSource([store]), tmp_path)
    assert tr.fused_attention and fused_attention(tr.teacher.backbone.vit)
    assert not tr.compiled and tr._student_step is tr.model and tr.optimizer_impl == "default"
    assert "applies on CUDA only" in caplog.text
    tr.student.backbone.vit.blocks[0].attn.fused_attn = False
    assert not fused_attention(tr.student.backbone.vit)
