"""The GPU path, measured: pretraining, embedding and LoRA on CUDA, with MFU and a bf16 check.

    python benchmarks/gpu_check.py           # a CUDA machine; about 5 minutes on one H100
    python benchmarks/gpu_check.py --smoke   # the CPU: tiny sizes, checks that it all runs

Writes benchmarks/results/gpu_check.{md,json} (``--smoke``: benchmarks/out/gpu_check_smoke/):

* **pretraining** of ``configs/vits16.yaml`` merged over config.yaml exactly as Snakemake merges
  (ViT-S/16, 2 x 224 px global + 8 x 96 px local crops, batch 256), eager and with
  ``pretrain.compile: true``, and the same recipe on ViT-B/16 (batch 128): images/s, model
  FLOPs utilisation (FLOPs of the model in one training step, counted by
  ``torch.utils.flop_counter``, over the GPU's dense bf16 peak; the views' resampling is not
  counted), peak memory, and the share of step time spent waiting for the DataLoader. On one
  GPU, and on every visible GPU under ``torchrun`` (NCCL) when there are several.
* **the pretraining loader alone**: images/s its workers deliver to the device with no model
  (uint8 patches, view parameters, masks), and images/s of the multi-crop views made on the
  device from them, so a slow step can be put on the loader or on the model.
* **embedding** with ViT-S/16 and ViT-B/16 in bf16: images/s and MFU of the forward pass, and
  the share of the stage's time spent writing the features to zarr.
* **LoRA** (q and v adapters, rank 2, batch 32, as the evaluation runs it): steps/s.
* **bf16 vs fp32**: cosine similarity of the same images' embeddings.

Goals: ViT-S/16 pretraining >= 1,000 images/s with the loader wait < 5%, ViT-B/16 pretraining
>= 30% MFU; the embed stage >= 90% of the forward-only rate at 96 and 224 px; zarr writes never
the bottleneck (write share < 5%). The figures are written as measured, goals met or not.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# dense (no sparsity) bf16 tensor-core peaks, TFLOPS, by device name
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
}


def peak_tflops(name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS.items():  # most specific names first
        if key in name:
            return value
    return None


def merged_vits16(smoke: bool) -> dict:
    """configs/vits16.yaml over config.yaml with Snakemake's own merge."""
    try:
        from snakemake.utils import update_config
    except ImportError:  # a GPU box with torch but not the workflow: the same recursive merge

        def update_config(base: dict, overlay: dict) -> None:
            for key, value in overlay.items():
                if isinstance(value, dict) and isinstance(base.get(key), dict):
                    update_config(base[key], value)
                else:
                    base[key] = value

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "configs" / "vits16.yaml").read_text()))
    pre = {k: v for k, v in config["pretrain"].items() if k not in ("enabled", "nproc")}
    pre["probe"]["dataset"] = ""
    pre["checkpoint_every"] = 10**9
    if smoke:  # same code path, laptop sizes
        pre["model"].update(
            arch="cytofm_vit_demo", model_args={"embed_dim": 64, "depth": 2, "num_heads": 2}
        )
        pre["crops"].update(global_size=64, local_size=32, n_local=2)
        pre["optim"].update(batch_size=8)
        pre["heads"].update(out_dim=256, patch_out_dim=256, hidden_dim=64, bottleneck_dim=32)
    return pre


def vitb16(pre: dict, smoke: bool) -> dict:
    """The ViT-S/16 recipe on ViT-B/16, batch 128 (256 does not fit 80 GB with 10 views)."""
    out = copy.deepcopy(pre)
    if not smoke:
        out["model"].update(arch="vit_base_patch16_224", model_args={})
        out["optim"]["batch_size"] = 128
    return out


def patch_store(path: Path, n: int, px: int) -> Path:
    """A patch store of dark round 'nuclei' on pale noise (compresses like real patches)."""
    from cytofm.store import PatchStoreWriter, atomic_group

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:px, :px]
    with atomic_group(path) as g:
        w = PatchStoreWriter(g, px, 256, {})
        for start in range(0, n, 256):
            m = min(256, n - start)
            imgs = rng.integers(200, 240, (m, px, px, 3), dtype=np.uint8)
            r = rng.uniform(px / 10, px / 4, m)
            inside = (yy[None] - px / 2) ** 2 + (xx[None] - px / 2) ** 2 < r[:, None, None] ** 2
            imgs[inside] = (80, 40, 120)
            w.append(imgs)
        w.close()
    return path


def step_flops(trainer) -> float:
    """FLOPs of the model in one training step (forward and backward), counted by torch: the
    step's count less that of making its views (resampling is not model work)."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = trainer.make_batch(trainer.step)
    with FlopCounterMode(display=False) as views:
        on = batch.to(trainer.device)
        trainer.views(on.patches, on.views)
    compiled = trainer._student_step, trainer._teacher_step
    trainer._student_step, trainer._teacher_step = trainer.model, trainer.teacher  # eager
    try:
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(batch)
    finally:
        trainer._student_step, trainer._teacher_step = compiled
    return float(counter.get_total_flops() - views.get_total_flops())


def loader_only(pre: dict, store: Path, steps: int, workdir: Path) -> dict:
    """The pretraining loader with no model: images/s its workers hand to the device (uint8
    patches, view parameters and masks, copied from pinned memory), and images/s of the
    views made on the device from one such batch."""
    import torch

    from cytofm.config import PretrainConfig, from_mapping
    from cytofm.ssl.data import PatchSource
    from cytofm.ssl.train import Trainer

    cfg = from_mapping(PretrainConfig, pre, "pretrain").updated({"optim.steps": steps + 2})
    tr = Trainer(cfg, PatchSource([store]), workdir)
    sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
    loader = iter(tr.loader(0, steps + 2))
    on = next(loader).to(tr.device, non_blocking=True)  # workers started, first batch
    sync()
    t0 = time.perf_counter()
    for batch in loader:
        on = batch.to(tr.device, non_blocking=True)
    sync()
    delivered = (steps + 1) * cfg.optim.batch_size / (time.perf_counter() - t0)
    tr.views(on.patches, on.views)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.views(on.patches, on.views)
    sync()
    views_rate = steps * cfg.optim.batch_size / (time.perf_counter() - t0)
    sync_free = None  # whether making the views needs no host-device synchronisation
    if tr.device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            tr.views(on.patches, on.views)
            sync_free = True
        except RuntimeError:
            sync_free = False
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return {
        "num_workers": tr.num_workers,
        "batch_size": cfg.optim.batch_size,
        "views": f"2 x {cfg.crops.global_size} + {cfg.crops.n_local} x {cfg.crops.local_size}",
        "loader_images_per_s": delivered,
        "views_images_per_s": views_rate,
        "views_sync_free": sync_free,
    }


def pretrain_one(pre: dict, store: Path, steps: int, warmup: int, workdir: Path) -> dict:
    import torch

    from cytofm.config import PretrainConfig, from_mapping
    from cytofm.ssl.data import PatchSource
    from cytofm.ssl.train import Trainer

    cfg = from_mapping(PretrainConfig, pre, "pretrain").updated({"optim.steps": steps + warmup + 1})
    tr = Trainer(cfg, PatchSource([store]), workdir)
    flops = step_flops(tr) * tr.world  # every rank does the same work on its share
    tr.fit(stop_at=tr.step + warmup)
    if tr.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    tr.history.clear()
    last = tr.fit(stop_at=tr.step + steps)
    if tr.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    waits = [h["data_wait_fraction"] for h in tr.history if "data_wait_fraction" in h]
    out = {
        "model": cfg.model.arch,
        "compile": cfg.compile,
        "compiled": tr.compiled,
        "world": tr.world,
        "batch_size": cfg.optim.batch_size,
        "num_workers": tr.num_workers,
        "steps": steps,
        "images_per_s": steps * cfg.optim.batch_size / dt,
        "step_s": dt / steps,
        "flops_per_step": flops,
        "achieved_tflops": flops * steps / dt / 1e12,
        "data_wait_fraction": float(np.mean(waits)) if waits else float("nan"),
        "loss": last.get("loss"),
        "params_m": sum(p.numel() for p in tr.student.backbone.parameters()) / 1e6,
    }
    if tr.device.type == "cuda":
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def pretrain_ddp(pre: dict, store: Path, steps: int, warmup: int, n: int, workdir: Path) -> dict:
    """The same measurement under torchrun with ``n`` processes (NCCL on GPUs)."""
    args = workdir / "ddp_args.json"
    result = workdir / "ddp_result.json"
    args.write_text(json.dumps({"pre": pre, "store": str(store), "steps": steps,
                                "warmup": warmup, "out": str(result)}))  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={n}", __file__, "--ddp-child", str(args)]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=900)
    return json.loads(result.read_text())


def ddp_child(args_path: str) -> None:
    a = json.loads(Path(args_path).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        out = pretrain_one(a["pre"], Path(a["store"]), a["steps"], a["warmup"], Path(tmp))
    if int(os.environ.get("RANK", "0")) == 0:
        Path(a["out"]).write_text(json.dumps(out))


def vit(arch: str, smoke: bool):
    """A randomly initialised timm ViT (no download) and its preprocessing; tiny with --smoke."""
    import timm
    import torch

    from cytofm.eval.backbones import LoadedBackbone

    kwargs = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 64} if smoke else {}
    size = 64 if smoke else 224
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    return LoadedBackbone(model, size, (0.5,) * 3, (0.25,) * 3, {"name": arch}), size


def embedding(arch: str, n: int, batch: int, device, smoke: bool, workdir: Path) -> dict:
    """Forward throughput of a ViT in bf16 and the stage's share of time writing zarr."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cytofm.eval.features import embed_array
    from cytofm.store import atomic_group

    bb, size = vit(arch, smoke)
    model = bb.model
    images = np.random.default_rng(0).integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    model.to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    flops_per_image = counter.get_total_flops() / batch
    embed_array(bb, images[: batch * 2], batch_size=batch, device=device, precision="bf16")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    feats = embed_array(bb, images, batch_size=batch, device=device, precision="bf16")
    sync()
    t_embed = time.perf_counter() - t0
    t1 = time.perf_counter()
    with atomic_group(workdir / f"{arch}.zarr") as g:  # as the embed stage stores them
        g.create_array("features", data=feats.astype(np.float16), chunks=(4096, feats.shape[1]))
    t_write = time.perf_counter() - t1
    return {
        "arch": arch,
        "images": n,
        "batch_size": batch,
        "images_per_s": n / t_embed,
        "flops_per_image": flops_per_image,
        "achieved_tflops": flops_per_image * n / t_embed / 1e12,
        "zarr_write_fraction": t_write / (t_embed + t_write),
    }


def embed_stage(
    store: Path, batch: int, smoke: bool, workdir: Path, workers: tuple = (0, "auto")
) -> list[dict]:
    """The ``embed`` stage itself (``run_embed``: zarr patches read by DataLoader workers,
    features written chunk by chunk from a background thread) against the model's forward
    pass alone on the same images already in GPU-ready memory: the share of the forward-only
    rate the stage reaches is how busy it keeps the device."""
    import torch

    from cytofm.config import BackboneSpec, TrackingConfig
    from cytofm.eval.features import embed_array
    from cytofm.stages.context import JobContext
    from cytofm.stages.embed import run_embed
    from cytofm.store import open_store

    args = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 64} if smoke else {}
    spec = BackboneSpec(name="vits16", kind="random", arch="vit_small_patch16_224",
                        model_args=args, input_size=64 if smoke else 0)  # fmt: skip
    job = JobContext(results_dir=workdir, tracking=TrackingConfig(tracking_uri="none"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    src = open_store(store)
    n, px = src["images"].shape[0], src["images"].shape[1]
    bb, _ = vit("vit_small_patch16_224", smoke)
    images = np.asarray(src["images"][:])
    embed_array(bb, images[: batch * 2], batch_size=batch, device=device, precision="bf16")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    embed_array(bb, images, batch_size=batch, device=device, precision="bf16")
    sync()
    forward = n / (time.perf_counter() - t0)
    rows = []
    for w in workers:
        out = workdir / f"stage_{px}_{w}.zarr"
        kw = dict(batch_size=batch, precision="bf16", device=device, num_workers=w, job=job)
        run_embed(spec, store, out, **kw)  # warm: kernels, worker start, page cache
        import shutil

        shutil.rmtree(out)
        t0 = time.perf_counter()
        summary = run_embed(spec, store, out, **kw)
        wall = time.perf_counter() - t0
        rows.append({
            "patch_px": int(px), "images": int(n), "batch_size": batch,
            "num_workers": summary["num_workers"],
            "images_per_s": summary["images_per_second"],
            "job_images_per_s": n / wall,
            "forward_only_images_per_s": forward,
            "device_busy_share": summary["images_per_second"] / forward,
        })  # fmt: skip
        shutil.rmtree(out)
    return rows


def bf16_agreement(device, smoke: bool) -> dict:

    from cytofm.eval.features import embed_array

    bb, size = vit("vit_small_patch16_224", smoke)
    images = np.random.default_rng(1).integers(0, 255, (256, size, size, 3), dtype=np.uint8)
    a = embed_array(bb, images, batch_size=128, device=device, precision="fp32")
    b = embed_array(bb, images, batch_size=128, device=device, precision="bf16")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "relative_error": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
        "ok": bool(cos.min() > 0.99),
    }


def lora_speed(device, smoke: bool) -> dict:
    import torch

    from cytofm.config import LoraConfig
    from cytofm.eval.lora import train_lora

    size = 64 if smoke else 224
    rng = np.random.default_rng(2)
    images = rng.integers(0, 255, (256, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 256)
    times = {}
    # the first run pays one-off costs (peft, kernels); then two lengths, whose difference is
    # the per-step time
    for steps in (2, 5, 45) if smoke else (5, 10, 60):
        bb, _ = vit("vit_small_patch16_224", smoke)
        t0 = time.perf_counter()
        train_lora(bb, images, labels, 4, LoraConfig(), 1e-3, 0, steps=steps, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times[steps] = time.perf_counter() - t0
    (s0, t0), (s1, t1) = sorted(times.items())[1:]
    return {"batch_size": LoraConfig().batch_size, "steps_per_s": (s1 - s0) / (t1 - t0)}


def write_md(res: dict, path: Path) -> None:
    env = res["environment"]
    peak = env.get("bf16_peak_tflops")

    def mfu(tflops, n=1):
        return f"{tflops / (peak * n):.1%}" if peak else "n/a (unknown peak)"

    lines = [
        "# GPU check",
        "",
        f"`python benchmarks/gpu_check.py{' --smoke' if res['smoke'] else ''}` on "
        f"{env['device']} x {env['n_gpus']} (torch {env['torch']}, {env['cpu_threads']} CPU "
        f"threads, bf16 dense peak {peak or 'unknown'} TFLOPS per GPU), {res['seconds']:.0f} s.",
    ]
    for key, error in res.get("errors", {}).items():
        lines += ["", f"**{key} failed:** `{error}`"]
    pre = [
        row
        for key in ("pretrain", "pretrain_compiled", "pretrain_vitb", "pretrain_ddp")
        for row in res.get(key, [])
    ]
    if pre:
        lines += ["", "## Pretraining (configs/vits16.yaml; ViT-B/16: the same recipe)", "",
                  "| model | compiled | GPUs | batch | loader workers | images/s | step s | "
                  "TFLOPS | MFU | loader wait | peak memory GB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in pre:
        lines.append(
            f"| {p.get('model', 'vit_small_patch16_224')} | {'yes' if p.get('compiled') else 'no'} "
            f"| {p['world']} | {p['batch_size']} | {p['num_workers']} | {p['images_per_s']:.0f} "
            f"| {p['step_s']:.3f} | {p['achieved_tflops']:.1f} | "
            f"{mfu(p['achieved_tflops'], p['world'])} | {p['data_wait_fraction']:.1%} | "
            f"{p.get('peak_memory_gb', float('nan')):.1f} |"
        )
    if pre:
        lines += ["", "Goals: ViT-S/16 >= 1,000 images/s with the loader wait < 5%; ViT-B/16 "
                  "MFU >= 30%."]  # fmt: skip
    if res.get("loader"):
        lo = res["loader"]
        free = {True: "yes", False: "no", None: "n/a"}[lo["views_sync_free"]]
        lines += ["", "## The pretraining loader alone (ViT-S/16 recipe, no model)", "",
                  "| loader workers | batch | views | images/s delivered to the device | "
                  "images/s of views made on the device | views without a host sync |",
                  "|---|---|---|---|---|---|",
                  f"| {lo['num_workers']} | {lo['batch_size']} | {lo['views']} | "
                  f"{lo['loader_images_per_s']:.0f} | {lo['views_images_per_s']:.0f} | "
                  f"{free} |"]  # fmt: skip
    if res.get("embedding"):
        lines += ["", "## Embedding, forward pass (bf16)", "",
                  "| model | batch | images/s | TFLOPS | MFU | zarr write share |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
    for e in res.get("embedding", []):
        lines.append(
            f"| {e['arch']} | {e['batch_size']} | {e['images_per_s']:.0f} | "
            f"{e['achieved_tflops']:.1f} | {mfu(e['achieved_tflops'])} | "
            f"{e['zarr_write_fraction']:.1%} |"
        )
    if res.get("embedding"):
        lines += ["", "Goal: MFU >= 60%, zarr write share < 5%."]
    if res.get("embed_stage"):
        lines += ["", "## The embed stage (ViT-S/16, bf16, patches read from zarr)", "",
                  "Goal: at least 90% of the forward-only rate at 96 and 224 px. Loader "
                  "workers 0: one read-ahead thread.", "",
                  "`run_embed` as a job runs it, against the forward pass alone on the same "
                  "images in memory (the device's ceiling for this model and batch).", "",
                  "| patch px | images | loader workers | stage images/s | job images/s "
                  "(with model load, store open) | forward-only images/s | share of forward "
                  "rate |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in res.get("embed_stage", []):
        lines.append(
            f"| {e['patch_px']} | {e['images']} | {e['num_workers']} | {e['images_per_s']:.0f} "
            f"| {e['job_images_per_s']:.0f} | {e['forward_only_images_per_s']:.0f} | "
            f"{e['device_busy_share']:.0%} |"
        )
    if "lora" in res:
        lo = res["lora"]
        lines += ["", f"## LoRA\n\n{lo['steps_per_s']:.1f} steps/s (ViT-S/16, q and v "
                  f"adapters, rank 2, batch {lo['batch_size']})."]  # fmt: skip
    if "bf16_vs_fp32" in res:
        b = res["bf16_vs_fp32"]
        lines += ["", f"## bf16 vs fp32 embeddings\n\ncosine similarity min "
                  f"{b['cosine_min']:.4f}, mean {b['cosine_mean']:.4f}; relative error "
                  f"{b['relative_error']:.3%} ({'within' if b['ok'] else 'outside'} the "
                  "tolerance, cosine > 0.99)."]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def sweep(res: dict, pre: dict, smoke: bool, steps: int, warmup: int, out_dir: Path, t0) -> None:
    """DataLoader workers against device use: the embed stage on cell-sized (96 px) and
    224 px patches, and pretraining, at several worker counts."""
    workers = (0, 2) if smoke else (0, 4, 8, 15)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_cells, cell_px = (64, 32) if smoke else (32768, 96)
        px = pre["crops"]["global_size"] if smoke else 224
        cells = patch_store(tmp / "cells.zarr", n_cells, cell_px)
        big = patch_store(tmp / "patches.zarr", 64 if smoke else 8192, px)
        batch = 16 if smoke else 512
        res["embed_stage"] = []
        for store in (cells, big):
            res["embed_stage"] += embed_stage(store, batch, smoke, tmp, workers)
            print(json.dumps(res["embed_stage"][-len(workers) :]), flush=True)
        res["pretrain"] = []
        for w in (0, 2) if smoke else (8, 15):
            one = pretrain_one({**pre, "num_workers": w}, big, steps, warmup, tmp / f"p{w}")
            res["pretrain"].append(one)
            print(json.dumps(one), flush=True)
    res["seconds"] = time.perf_counter() - t0
    (out_dir / "gpu_check_sweep.json").write_text(json.dumps(res, indent=1))
    lines = ["# DataLoader workers against device use", "",
             f"`python benchmarks/gpu_check.py --sweep{' --smoke' if smoke else ''}` on "
             f"{res['environment']['device']} ({res['environment']['cpu_threads']} CPU threads), "
             f"{res['seconds']:.0f} s.", "", "## The embed stage (ViT-S/16, bf16)", "",
             "| patch px | loader workers | stage images/s | share of forward rate |",
             "|---|---|---|---|"]  # fmt: skip
    for e in res["embed_stage"]:
        lines.append(f"| {e['patch_px']} | {e['num_workers']} | {e['images_per_s']:.0f} | "
                     f"{e['device_busy_share']:.0%} |")  # fmt: skip
    lines += ["", "## Pretraining (configs/vits16.yaml)", "",
              "| loader workers | images/s | loader wait |", "|---|---|---|"]  # fmt: skip
    for p in res["pretrain"]:
        lines.append(f"| {p['num_workers']} | {p['images_per_s']:.0f} | "
                     f"{p['data_wait_fraction']:.0%} |")  # fmt: skip
    (out_dir / "gpu_check_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--ddp-child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="only DataLoader workers: the embed stage at 0/4/8/15 and pretraining at 8/15 "
        "(gpu_check_sweep.{json,md})",
    )
    args = ap.parse_args()
    if args.ddp_child:
        ddp_child(args.ddp_child)
        return
    import torch

    t_start = time.perf_counter()
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: run on a GPU machine, or --smoke on the CPU")
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    n_gpus = torch.cuda.device_count() if cuda else 0
    out_dir = args.out or (
        REPO / "benchmarks" / "out" / "gpu_check_smoke" if args.smoke else RESULTS
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pre = merged_vits16(args.smoke)
    steps, warmup = (4, 1) if args.smoke else (30, 5)
    res: dict = {
        "smoke": args.smoke,
        "environment": {
            "device": name,
            "n_gpus": n_gpus,
            "torch": torch.__version__,
            "bf16_peak_tflops": peak_tflops(name) if cuda else None,
            "cpu_threads": os.cpu_count(),
        },
        "config": copy.deepcopy(pre),
    }

    def save() -> None:
        res["seconds"] = time.perf_counter() - t_start
        (out_dir / "gpu_check.json").write_text(json.dumps(res, indent=1))

    def section(key: str, fn) -> None:
        """One measurement; a failure is recorded and the others still run."""
        t = time.perf_counter()
        try:
            res[key] = fn()
        except Exception as exc:  # reported in the results, not hidden
            import traceback

            traceback.print_exc()
            res.setdefault("errors", {})[key] = f"{type(exc).__name__}: {exc}"
        print(f"{key}: {time.perf_counter() - t:.1f} s {json.dumps(res.get(key))}", flush=True)
        save()

    if args.sweep:
        sweep(res, pre, args.smoke, steps, warmup, out_dir, t_start)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n, batch = (64, 16) if args.smoke else (16384, 512)
        section("embedding", lambda: [
            embedding(a, n, batch, device, args.smoke, tmp)
            for a in ("vit_small_patch16_224", "vit_base_patch16_224")
        ])  # fmt: skip
        n_cells, cell_px = (64, 32) if args.smoke else (32768, 96)
        cells = patch_store(tmp / "cells.zarr", n_cells, cell_px)
        px = pre["crops"]["global_size"] if args.smoke else 224
        store = patch_store(tmp / "patches.zarr", 64 if args.smoke else 8192, px)
        section("embed_stage", lambda: embed_stage(cells, batch, args.smoke, tmp)
                + embed_stage(store, batch, args.smoke, tmp))  # fmt: skip
        section("bf16_vs_fp32", lambda: bf16_agreement(device, args.smoke))
        section("lora", lambda: lora_speed(device, args.smoke))
        section("loader", lambda: loader_only(pre, store, steps, tmp / "loader"))
        section("pretrain", lambda: [pretrain_one(pre, store, steps, warmup, tmp / "one")])
        section("pretrain_compiled", lambda: [
            pretrain_one({**pre, "compile": True}, store, steps, warmup, tmp / "compiled")
        ])  # fmt: skip
        section("pretrain_vitb", lambda: [
            pretrain_one(vitb16(pre, args.smoke), store, steps, warmup, tmp / "vitb")
        ])  # fmt: skip
        if n_gpus > 1:
            section("pretrain_ddp", lambda: [pretrain_ddp(pre, store, steps, warmup, n_gpus, tmp)])
    save()
    write_md(res, out_dir / "gpu_check.md")
    print((out_dir / "gpu_check.md").read_text())


if __name__ == "__main__":
    main()
