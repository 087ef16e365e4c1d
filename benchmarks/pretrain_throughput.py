"""iBOT pretraining throughput (images/s) and peak memory, per config, in fresh processes.

    python benchmarks/pretrain_throughput.py             # demo config + ViT-S/16, this machine
    python benchmarks/pretrain_throughput.py --steps 20      # longer timing window

Synthetic random patches stand in for a patch store (throughput does not depend on content).
"Images" are source patches per second (each yields 2 global + n_local views). On a GPU the
script also reports model FLOP utilisation against the bf16 peak given with --peak-tflops.
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
    args = ap.parse_args()
    if args.child:
        name, steps, warmup, batch, workers = args.child
        print(json.dumps(_child(name, int(steps), int(warmup), int(batch) or None, int(workers))))
        return
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
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
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
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n\n" + json.dumps(meta) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
