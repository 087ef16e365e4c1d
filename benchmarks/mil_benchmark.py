"""Attention MIL cost: training time per fold on the demo, and memory for very large bags.

    python benchmarks/mil_benchmark.py                 # after `make demo` (reads results/)
    python benchmarks/mil_benchmark.py --results other-results --instances 100000

1. Training time per fold: the demo's slide task (its cohort, patient-grouped folds, the
   `evaluate.mil_*` settings of config.yaml) on the cached cell features of every backbone,
   trained fold by fold through the same functions as the `mil` stage, seed 0. Needs a finished
   demo run (`make demo`).
2. Memory for one bag of N instances (default 100,000) at feature sizes 128 (demo ViT), 384
   (ViT-S) and 1024 (ViT-L): each case runs in a fresh process that holds the bag as float16 (as
   cached), runs one training step (forward + backward + AdamW) and one inference pass, and
   reports its peak resident memory above the process's baseline, and the step time.

Writes benchmarks/results/mil_<tag>.{json,md} (tag: cpu by default).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    """Current resident memory of this process in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bag_memory_case(n: int, dim: int, hidden: int, attn_dim: int) -> dict:
    """Runs inside a fresh process: one training step and one inference pass on one bag."""
    from cytofm.eval.mil import GatedABMIL, predict_mil

    torch.manual_seed(0)
    model = GatedABMIL(dim, 2, hidden, attn_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    base = _rss_mb()
    bag = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32).astype(np.float16)
    t0 = time.perf_counter()
    x = torch.as_tensor(bag).float().unsqueeze(0)
    logits, _ = model(x, torch.ones(1, n, dtype=torch.bool))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1]))
    opt.zero_grad()
    loss.backward()
    opt.step()
    step_s = time.perf_counter() - t0
    del x, logits, loss
    t0 = time.perf_counter()
    _, attention = predict_mil(model, [bag], [0])
    infer_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {
        "instances": n,
        "dim": dim,
        "bag_mb": bag.nbytes / 2**20,
        "peak_above_baseline_mb": peak - base,
        "train_step_s": step_s,
        "inference_s": infer_s,
        "attention_sums_to_one": bool(abs(float(attention[0].sum()) - 1) < 1e-3),
    }


def bench_folds(results: Path, config: dict) -> list[dict]:
    from cytofm.config import EvalConfig, SlideTaskConfig, from_mapping
    from cytofm.eval.mil import grouped_folds, train_mil
    from cytofm.eval.mil_cv import _inner_split, _read_bag

    ev = {k: v for k, v in config["evaluate"].items() if k not in ("tasks", "slide_tasks")}
    cfg = from_mapping(EvalConfig, ev, "evaluate")
    name, entry = next(iter(config["evaluate"]["slide_tasks"].items()))
    task = from_mapping(SlideTaskConfig, {"name": name, **entry}, name)
    sheet_path = results / "demo" / "slides.tsv"
    if not sheet_path.is_file():
        raise SystemExit(f"{sheet_path} not found: run `make demo` first (or pass --results)")
    import pandas as pd

    sheet = pd.read_csv(sheet_path, sep="\t").sort_values("slide_id")
    y = sheet[task.label].astype(int).to_numpy()
    groups = sheet[task.group].astype(str).to_numpy()
    rows = []
    for backbone in sorted(config["backbones"]):
        bags = [
            _read_bag(results / "features" / backbone / task.instances / f"{s}.zarr", s)[0]
            for s in sheet["slide_id"]
        ]
        times = []
        for train, _ in grouped_folds(y, groups, task.folds, 0):
            tr, va = _inner_split(y, groups, train, 0)
            t0 = time.perf_counter()
            _, hist = train_mil(bags, y, tr, va, 2, cfg.mil, seed=0)
            times.append({"seconds": time.perf_counter() - t0, "epochs": hist["epochs"]})
        rows.append(
            {
                "backbone": backbone,
                "slides": len(bags),
                "instances_per_slide": float(np.mean([len(b) for b in bags])),
                "dim": int(bags[0].shape[1]),
                "folds": times,
                "mean_seconds_per_fold": float(np.mean([t["seconds"] for t in times])),
                "mean_seconds_per_epoch": float(
                    np.sum([t["seconds"] for t in times]) / np.sum([t["epochs"] for t in times])
                ),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(REPO / "results"))
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    ap.add_argument("--instances", type=int, default=100_000)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--tag", default="cpu", help="file name suffix: mil_<tag>.{json,md}")
    ap.add_argument("--case", nargs=2, type=int, help=argparse.SUPPRESS)  # internal: n dim
    args = ap.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    hidden = int(config["evaluate"]["mil"].get("hidden", 128))
    attn = int(config["evaluate"]["mil"].get("attn_dim", 64))
    if args.case:
        print(json.dumps(bag_memory_case(args.case[0], args.case[1], hidden, attn)))
        return
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "folds": bench_folds(Path(args.results), config),
        "bags": [],
    }
    for dim in (128, 384, 1024):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--config",
                args.config,
                "--case",
                str(args.instances),
                str(dim),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=3600,
        )
        result["bags"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"mil_{args.tag}.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Attention MIL on CPU ({args.results})",
        "",
        f"Machine: {result['machine']}",
        "",
        "Training time per fold (demo slide task, seed 0, config.yaml's mil_* settings):",
        "",
        "| backbone | slides | cells/slide | dim | s/fold (mean) | s/epoch | epochs per fold |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['backbone']} | {r['slides']} | {r['instances_per_slide']:.0f} | {r['dim']} | "
        f"{r['mean_seconds_per_fold']:.2f} | {r['mean_seconds_per_epoch']:.3f} | "
        f"{', '.join(str(f['epochs']) for f in r['folds'])} |"
        for r in result["folds"]
    ]
    lines += [
        "",
        f"One bag of {args.instances:,} instances (float16 in memory, hidden {hidden}, "
        f"attention {attn}); peak resident memory above the process baseline:",
        "",
        "| dim | bag (MiB) | peak above baseline (MiB) | train step (s) | inference (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {b['dim']} | {b['bag_mb']:.0f} | {b['peak_above_baseline_mb']:.0f} | "
        f"{b['train_step_s']:.2f} | {b['inference_s']:.2f} |"
        for b in result["bags"]
    ]
    (out / f"mil_{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
