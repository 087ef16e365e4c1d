"""Embedding throughput (images/s) per backbone size, and wall time of the few-shot grid.

    python benchmarks/eval_throughput.py                  # this machine (CPU, or a GPU if any)
    python benchmarks/eval_throughput.py --n 4096          # more images per timing

1. Embedding: the demo ViT (64 px) and ViT-S/16 (224 px) with random weights embed uint8
   patches from an in-memory array through the same code path as the embed stage
   (resize, normalise, forward; bf16 autocast on GPU). Throughput does not depend on content.
2. Few-shot grid: the protocol of the cytology LoRA paper (Dausort, Godelaine et al.: shots
   1, 2, 4, 8, 16, 50 x 3 seeds, C chosen on validation) on cached features of PBC's size
   (1,200 rows, 8 classes, 384-d), with bootstrap CIs, timed end to end through the evaluate stage.

Writes benchmarks/results/eval_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

from cytofm.config import EvalConfig, TaskConfig
from cytofm.eval.backbones import BackboneSpec, LoadedBackbone
from cytofm.eval.features import embed_array, pick_device
from cytofm.stages.evaluate import run_evaluate
from cytofm.store import PatchStoreWriter, atomic_group

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "demo ViT (d128x4, patch 8, 64 px)": (
        dict(embed_dim=128, depth=4, num_heads=4, patch_size=8, img_size=64),
        64,
    ),
    "ViT-S/16 (224 px)": ({}, 224),
}


def bench_embed(n: int, device: torch.device) -> list[dict]:
    rows = []
    images = np.random.default_rng(0).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
    for name, (args, size) in MODELS.items():
        model = timm.create_model("vit_small_patch16_224", num_classes=0, **args)
        bb = LoadedBackbone(model, size, (0.5,) * 3, (0.25,) * 3, {})
        embed_array(bb, images[:256], batch_size=128, device=device)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        embed_array(bb, images, batch_size=256, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rows.append(
            {
                "model": name,
                "input_px": size,
                "images": n,
                "seconds": dt,
                "images_per_s": n / dt,
                "device": str(device),
            }
        )
        print(rows[-1])
    return rows


def bench_grid(tmp: Path) -> dict:
    rng = np.random.default_rng(0)
    n_classes, per_class, dim = 8, 150, 384
    labels = np.repeat(np.arange(n_classes), per_class)
    centres = rng.normal(size=(n_classes, dim))
    feats = centres[labels] * 0.35 + rng.normal(size=(len(labels), dim))
    store = tmp / "ds.zarr"
    with atomic_group(store) as g:
        w = PatchStoreWriter(g, 8, 256, {"labels": (np.int16, ()), "groups": (str, ())})
        w.append(
            np.zeros((len(labels), 8, 8, 3), np.uint8),
            labels=labels.astype(np.int16),
            groups=np.full(len(labels), "", dtype=str),
        )
        w.close()
        g.attrs["classes"] = [f"c{i}" for i in range(n_classes)]
    fstore = tmp / "f.zarr"
    with atomic_group(fstore) as g:
        g.create_array("features", shape=feats.shape, dtype="float16")[:] = feats
    task = TaskConfig(name="grid", dataset="ds", shots=(1, 2, 4, 8, 16, 50), seeds=(0, 1, 2))
    cfg = EvalConfig()
    spec = BackboneSpec("x", "random", arch="vit_small_patch16_224")
    out = {}
    for protocol in ("linear", "knn", "fewshot"):
        t0 = time.perf_counter()
        run_evaluate(
            task, cfg, protocol, spec, store, tmp / f"{protocol}.json", features_store=fstore
        )
        out[protocol] = time.perf_counter() - t0
        print(protocol, out[protocol])
    return {
        "rows": len(labels),
        "classes": n_classes,
        "dim": dim,
        "fits": "6 shots x 3 seeds x 5 C values",
        "bootstrap": cfg.bootstrap,
        "seconds": out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "torch": torch.__version__,
        },
        "embed": bench_embed(args.n, device),
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["fewshot_grid"] = bench_grid(Path(tmp))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if device.type == "cuda" else "cpu"
    (out / f"eval_throughput_{tag}.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Evaluation throughput ({tag})",
        "",
        f"Machine: {result['machine']}",
        "",
        "| model | input | images/s | device |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['input_px']} px | {r['images_per_s']:.1f} | {r['device']} |"
        for r in result["embed"]
    ]
    g = result["fewshot_grid"]
    lines += [
        "",
        f"Few-shot grid on cached features ({g['rows']} rows, {g['classes']} classes, "
        f"{g['dim']}-d; {g['fits']}; {g['bootstrap']} bootstrap resamples):",
        "",
    ]
    lines += [f"- {k}: {v:.1f} s" for k, v in g["seconds"].items()]
    (out / f"eval_throughput_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
