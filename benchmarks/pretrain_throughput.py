"""iBOT pretraining throughput (images/s) and peak memory, per config, in fresh processes,
and what the loader costs the CPU per sample.

    python benchmarks/pretrain_throughput.py             # demo config + ViT-S/16, this machine
    python benchmarks/pretrain_throughput.py --steps 20      # longer timing window

Synthetic random patches stand in for a patch store (throughput does not depend on content).
"Images" are source patches per second (each yields 2 global + n_local views).

The loader table times, on one thread (what one DataLoader worker has), the CPU work per
sample of a worker: reading the patches from zarr and drawing the view parameters (what a
worker does now), against the same plus making every view image by image on the CPU (what a
worker did before views moved to the device; `reference_view` is that per-image code). The view
maker table gives the batched views' images/s on this machine's CPU threads.
Writes benchmarks/results/pretrain_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
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


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _config(name: str) -> dict:
    """The pretrain section as Snakemake merges it (nested keys merge; its own update_config)."""
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if name == "vits16":
        update_config(config, yaml.safe_load((REPO / "configs" / "vits16.yaml").read_text()))
    base = config["pretrain"]
    base.pop("enabled")
    base.pop("nproc")
    base["probe"]["dataset"] = ""
    return base


def _child(name: str, steps: int, warmup: int, batch: int | None, workers: int) -> dict:
    import torch

    from cytofm.config import PretrainConfig, from_mapping
    from cytofm.ssl.data import PatchSource
    from cytofm.ssl.train import Trainer
    from cytofm.store import PatchStoreWriter, atomic_group

    raw = _config(name)
    if batch:
        raw["optim"]["batch_size"] = batch
    raw["optim"]["steps"] = 2 * steps + warmup  # the in-process timing, then the DataLoader one
    raw["checkpoint_every"] = 10**9
    raw["log_every"] = 1
    cfg = from_mapping(PretrainConfig, raw, "pretrain")
    patch_px = 224 if name == "vits16" else 64
    tmp = Path(tempfile.mkdtemp())
    with atomic_group(tmp / "p.zarr") as g:
        w = PatchStoreWriter(g, patch_px, 64, {})
        rng = np.random.default_rng(0)
        w.append(
            rng.integers(
                0, 255, (max(cfg.optim.batch_size * 2, 128), patch_px, patch_px, 3), dtype=np.uint8
            )
        )
        w.close()
    tr = Trainer(cfg, PatchSource([tmp / "p.zarr"]), tmp / "out")
    for _ in range(warmup):
        tr.train_step(tr.make_batch(tr.step))
    load_s = train_s = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        batch_ = tr.make_batch(tr.step)
        t1 = time.perf_counter()
        tr.train_step(batch_)
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        load_s += t1 - t0
        train_s += t2 - t1
    n_img = steps * cfg.optim.batch_size
    # the same steps through the training loop's DataLoader (worker processes read and augment)
    tr.num_workers = workers
    tr.history.clear()
    t0 = time.perf_counter()
    tr.fit(stop_at=tr.step + steps)
    if tr.device.type == "cuda":
        torch.cuda.synchronize()
    fit_s = time.perf_counter() - t0
    waits = [h["data_wait_fraction"] for h in tr.history if "data_wait_fraction" in h]
    out = {
        "config": name,
        "device": str(tr.device),
        "batch_size": cfg.optim.batch_size,
        "params_m": sum(p.numel() for p in tr.student.parameters()) / 1e6,
        "images_per_s": n_img / (load_s + train_s),
        "images_per_s_model_only": n_img / train_s,
        "loader_fraction": load_s / (load_s + train_s),
        "loader_workers": workers,
        "images_per_s_with_workers": n_img / fit_s,
        "data_wait_fraction": float(np.mean(waits)) if waits else float("nan"),
        "peak_rss_mb": _peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
    }
    if tr.device.type == "cuda":
        out["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
        out["gpu"] = torch.cuda.get_device_name()
    return out


LOADER_CASES = {
    # patch px: (global view px, local view px, local views): ViT-S/16's recipe at 224 px
    # (configs/vits16.yaml), and the same view counts scaled to 96 px patches
    224: (224, 96, 8),
    96: (96, 48, 8),
}


def _patch_store(tmp: Path, patch_px: int, n: int) -> Path:
    from cytofm.store import PatchStoreWriter, atomic_group

    path = tmp / f"p{patch_px}.zarr"
    with atomic_group(path) as g:
        w = PatchStoreWriter(g, patch_px, 64, {})
        rng = np.random.default_rng(0)
        w.append(rng.integers(0, 255, (n, patch_px, patch_px, 3), dtype=np.uint8))
        w.close()
    return path


def loader_cost(batch: int, steps: int) -> list[dict]:
    """CPU microseconds per sample of a loader worker (one thread), now and before."""
    import torch

    from cytofm.config import PretrainConfig
    from cytofm.ssl.augment import N_GLOBAL, reference_view
    from cytofm.ssl.data import PatchSource
    from cytofm.ssl.masking import BlockMasker
    from cytofm.ssl.train import StepBatches

    torch.set_num_threads(1)
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for patch_px, (g_px, l_px, n_local) in LOADER_CASES.items():
        cfg = PretrainConfig().updated(
            {
                "model.patch_size": 16,
                "crops.global_size": g_px,
                "crops.local_size": l_px,
                "crops.n_local": n_local,
                "crops.global_scale": [0.32, 1.0],
                "crops.local_scale": [0.05, 0.32],
                "optim.batch_size": batch,
                "optim.steps": steps,
            }
        )
        # one epoch of fresh stores, so every sample is decompressed once, as in training
        store = _patch_store(tmp, patch_px, batch * steps)
        mean = std = torch.full((3,), 0.5)
        now = before = 0.0
        for with_views in (False, True):
            data = StepBatches(PatchSource([store]), BlockMasker((g_px // 16,) * 2), cfg, 0, 1,
                               steps)  # fmt: skip
            t0 = time.process_time()
            for step in range(steps):
                item = data[step]
                if not with_views:
                    continue
                imgs = item.patches.permute(0, 3, 1, 2).float() / 255
                for v in range(item.boxes.shape[0]):
                    size = g_px if v < N_GLOBAL else l_px
                    for i in range(len(imgs)):
                        reference_view(
                            imgs[i], item.boxes[v, i], item.dihedral[v, i], item.color[v, i],
                            float(item.blur[v, i]), size, True, mean, std,
                        )  # fmt: skip
            if with_views:
                before = time.process_time() - t0
            else:
                now = time.process_time() - t0
        n = batch * steps
        rows.append(
            {
                "patch_px": patch_px,
                "views": f"{N_GLOBAL} x {g_px} + {n_local} x {l_px}",
                "us_per_sample_before": before / n * 1e6,
                "us_per_sample_now": now / n * 1e6,
                "reduction": before / now,
                "batch": batch,
                "steps": steps,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def view_maker_rate(batch: int, steps: int) -> list[dict]:
    """Images/s of the batched views on this CPU (all its threads), per patch size."""
    import torch

    from cytofm.config.sections import CropsConfig
    from cytofm.ssl.augment import ViewMaker, draw_view_params

    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for patch_px, (g_px, l_px, n_local) in LOADER_CASES.items():
        crops = CropsConfig(
            global_size=g_px,
            local_size=l_px,
            n_local=n_local,
            global_scale=(0.32, 1.0),
            local_scale=(0.05, 0.32),
        )
        maker = ViewMaker(crops, (0.5,) * 3, (0.25,) * 3)
        rng = np.random.default_rng(0)
        patches = torch.from_numpy(rng.integers(0, 255, (batch, patch_px, patch_px, 3), np.uint8))
        gens = [torch.Generator().manual_seed(i) for i in range(batch)]
        params = draw_view_params(gens, crops, patch_px)
        maker(patches, params)  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            maker(patches, params)
        dt = time.perf_counter() - t0
        rows.append(
            {
                "patch_px": patch_px,
                "views": f"2 x {g_px} + {n_local} x {l_px}",
                "batch": batch,
                "images_per_s": batch * steps / dt,
                "threads": torch.get_num_threads(),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def measured_summary(res: dict) -> str:
    """The paragraph docs/measured.md quotes, made from the results file (a test keeps the two
    the same)."""
    loader = {r["patch_px"]: r for r in res["loader"]}
    views = {r["patch_px"]: r for r in res["view_maker"]}
    parts = [
        f"{px} px patches ({loader[px]['views']} views) {loader[px]['us_per_sample_before']:,.0f}"
        f" -> {loader[px]['us_per_sample_now']:,.0f} us ({loader[px]['reduction']:.0f}x less)"
        for px in sorted(loader, reverse=True)
    ]
    rates = ", ".join(
        f"{views[px]['images_per_s']:,.0f} images/s at {px} px"
        for px in sorted(views, reverse=True)
    )
    demo = next((r for r in res["results"] if r["config"] == "demo"), None)
    text = (
        "**Pretraining loader** (`python benchmarks/pretrain_throughput.py`, "
        "`benchmarks/results/pretrain_throughput.md`): a DataLoader worker's CPU time per "
        "sample (one thread, one epoch, each sample decompressed once), now that workers only "
        "read uint8 patches and draw view parameters and masks, against also making every view "
        f"image by image on the CPU as before: {'; '.join(parts)}. The batched views, on this "
        f"machine's {next(iter(views.values()))['threads']} CPU threads: {rates} (on a GPU they "
        "run on the device)."
    )
    if demo:
        text += (
            f" The demo's recipe trains at {demo['images_per_s']:.1f} images/s on this CPU "
            f"(views included; the loader {demo['loader_fraction']:.0%} of the step)."
        )
    return text


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument(
        "--workers", type=int, default=1, help="DataLoader workers for the training-loop timing"
    )
    ap.add_argument("--configs", nargs="*", default=["demo", "vits16"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument(
        "--vits16-batch",
        type=int,
        default=16,
        help="batch for ViT-S/16 on CPU (the config's 256 is for a GPU)",
    )
    ap.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "pretrain_throughput"
    )
    ap.add_argument("--loader-batch", type=int, default=32, help="samples per loader step")
    ap.add_argument("--loader-steps", type=int, default=8, help="loader steps timed (an epoch)")
    args = ap.parse_args()
    if args.child:
        name, steps, warmup, batch, workers = args.child
        print(json.dumps(_child(name, int(steps), int(warmup), int(batch) or None, int(workers))))
        return
    loader = loader_cost(args.loader_batch, args.loader_steps)
    views = view_maker_rate(args.loader_batch, args.loader_steps)
    rows = []
    for name in args.configs:
        batch = args.vits16_batch if name == "vits16" else 0
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                name,
                str(args.steps),
                "2",
                str(batch),
                str(args.workers),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
        )
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "command": "python benchmarks/pretrain_throughput.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "results": rows, "loader": loader, "view_maker": views}, indent=2)
    )
    lines = [
        "| config | device | batch | params (M) | images/s | model-only images/s | "
        "loader share (in-process) | images/s with loader workers | loader wait share | "
        "peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['device']} | {r['batch_size']} | {r['params_m']:.1f} | "
            f"{r['images_per_s']:.1f} | {r['images_per_s_model_only']:.1f} | "
            f"{r['loader_fraction']:.0%} | {r['images_per_s_with_workers']:.1f} "
            f"({r['loader_workers']} workers) | {r['data_wait_fraction']:.0%} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "Loader CPU time per sample (one thread, as one DataLoader worker): reading from zarr "
        "and drawing the view parameters (now), against also making the views image by image "
        "on the CPU (before).",
        "",
        "| patch px | views | us/sample before | us/sample now | reduction |",
        "|---|---|---|---|---|",
    ]
    for r in loader:
        lines.append(
            f"| {r['patch_px']} | {r['views']} | {r['us_per_sample_before']:.0f} | "
            f"{r['us_per_sample_now']:.0f} | {r['reduction']:.0f}x |"
        )
    lines += [
        "",
        "Batched view maker on this CPU (the same code that runs on the GPU):",
        "",
        "| patch px | views | batch | images/s | threads |",
        "|---|---|---|---|---|",
    ]
    for r in views:
        lines.append(
            f"| {r['patch_px']} | {r['views']} | {r['batch']} | {r['images_per_s']:.0f} | "
            f"{r['threads']} |"
        )
    summary = measured_summary({"results": rows, "loader": loader, "view_maker": views})
    lines += ["", summary]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n\n" + json.dumps(meta) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
