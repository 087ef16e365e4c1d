"""Does pretraining learn, and by how much does the pretraining draw move the answer?

The recipe of ``tests/test_ssl_learns.py`` (a tiny ViT pretrained for 200 steps on 1,200
unlabelled PBC blood cells at 64 px, with the probe task's test rows left out of pretraining),
run with several pretraining seeds; each checkpoint's linear probe is compared with random
initialisations on the same split. The spread of the margin over pretraining seeds sets the
test's threshold: mean - 3 sd, so a recipe that still learns passes with any seed and one that
stops learning fails.

    python benchmarks/ssl_learns.py            # seeds 0 1 2 (about 2 minutes each, 2 cores)

Writes ``benchmarks/results/ssl_learns.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# the recipe the test runs; the results file records it and the test checks it is the same
RECIPE = {
    "optim.steps": 200,
    "optim.warmup_steps": 20,
    "teacher.temp_warmup_steps": 20,
    "teacher.momentum": 0.98,
    "optim.lr": 0.008,
    "probe.dataset": "",
    "checkpoint_every": 1000,
}
PATCH_PX = 64
RANDOM_SEEDS = (0, 1)


def pbc_images() -> Path:
    data = Path(os.environ.get("CYTOFM_SHARED_DATA", ROOT.parent / "shared" / "data"))
    return data / "pbc_blood_subset" / "images"


def task():
    from cytofm.config import TaskConfig

    return TaskConfig(name="pbc", dataset="pbc")


def import_pbc(out: Path) -> Path:
    from cytofm.config import DatasetConfig
    from cytofm.stages.dataset import run_import

    store = out / "pbc.zarr"
    if not store.exists():
        run_import(DatasetConfig(name="pbc", path=str(pbc_images()), patch_px=PATCH_PX), store)
    return store


def margin(store: Path, out: Path, seed: int) -> dict:
    """One pretraining seed of the recipe, probed inductively."""
    from cytofm.config import PretrainConfig
    from cytofm.stages.probe import inductive_margin

    cfg = PretrainConfig().updated({**RECIPE, "seeds": [seed]})
    return inductive_margin(cfg, store, task(), out / f"model{seed}", random_seeds=RANDOM_SEEDS)


def threshold(margins) -> float:
    """The test's threshold from the margins over pretraining seeds: mean - 3 sd."""
    m = np.asarray(margins, float)
    return float(m.mean() - 3 * m.std(ddof=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--runs-to",
        type=Path,
        help="write the runs alone to this JSON file, not benchmarks/results (the test's use)",
    )
    args = ap.parse_args()
    if not pbc_images().is_dir():
        sys.exit(f"needs {pbc_images()} (the PBC subset of ../shared/data)")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        store = import_pbc(Path(tmp))
        for seed in args.seeds:
            t0 = time.perf_counter()
            res = margin(store, Path(tmp), seed)
            keep = ("ssl_mean", "random_mean", "random_std", "margin", "split", "chance")
            runs.append({"pretrain_seed": seed, **{k: res[k] for k in keep},
                         "left_out": res["test_rows_left_out_of_pretraining"],
                         "seconds": time.perf_counter() - t0})  # fmt: skip
            print(runs[-1], flush=True)
    if args.runs_to:
        args.runs_to.write_text(json.dumps(runs, indent=2))
        return
    margins = [r["margin"] for r in runs]
    out = {
        "recipe": RECIPE,
        "patch_px": PATCH_PX,
        "random_seeds": list(RANDOM_SEEDS),
        "runs": runs,
        "margin_mean": float(np.mean(margins)),
        "margin_sd": float(np.std(margins, ddof=1)),
        "threshold": threshold(margins),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python benchmarks/ssl_learns.py --seeds " + " ".join(map(str, args.seeds)),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ssl_learns.json").write_text(json.dumps(out, indent=2))
    lines = [
        "# Pretraining learns: the margin over random weights, per pretraining seed",
        "",
        f"`{out['command']}` ({out['machine']['cpus']} CPUs). PBC, 1,200 cells, 8 classes, "
        f"{PATCH_PX} px; 200 steps; the probe task's {runs[0]['split']['n_test']} test rows "
        "left out of pretraining; linear probe balanced accuracy on them, random weights "
        f"with seeds {list(RANDOM_SEEDS)}.",
        "",
        "| pretraining seed | pretrained | random (mean) | margin | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['pretrain_seed']} | {r['ssl_mean']:.3f} | {r['random_mean']:.3f} | "
            f"{r['margin']:+.3f} | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        f"Margin over pretraining seeds: {out['margin_mean']:+.3f} (sd {out['margin_sd']:.3f}). "
        f"`tests/test_ssl_learns.py` asks for mean - 3 sd = {out['threshold']:+.3f}.",
    ]
    (RESULTS / "ssl_learns.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
