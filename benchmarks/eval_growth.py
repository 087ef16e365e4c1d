"""How the costs this project's evaluation adds grow: the content leak check, the weighted kNN
and the morphometry control, each at two sizes (2-core CPU).

    python benchmarks/eval_growth.py

Writes ``benchmarks/results/eval_growth.json`` and ``.md``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from cytofm.eval.linear import knn_proba
from cytofm.eval.morphometry import measure_patch
from cytofm.inductive import check_test_rows, write_content

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def content_check(n: int, rng) -> float:
    """ms to check a task's test rows (the last 20% of ``n`` images) against a record of the
    other 80% read by pretraining."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hashes = rng.integers(0, 2**63, n, dtype=np.uint64)
        group = zarr.open_group(tmp / "d.zarr", mode="w")
        group.create_array("pixel_hash", data=hashes, chunks=(n,))
        (tmp / "bb").mkdir()
        read = np.sort(hashes[: int(0.8 * n)])
        write_content(tmp / "bb", {"pixel_hash": read, "slide_sha256": [], "unchecked": []})
        t0 = time.perf_counter()
        check_test_rows("t", tmp / "d.zarr", np.arange(int(0.8 * n), n), tmp / "bb", False)
        return (time.perf_counter() - t0) * 1000


def knn(n_train: int, rng) -> float:
    """s for 2,000 queries on 384-d features, 8 classes, k = 20."""
    x = rng.normal(size=(n_train, 384)).astype(np.float32)
    q = rng.normal(size=(2000, 384)).astype(np.float32)
    t0 = time.perf_counter()
    knn_proba(x, rng.integers(0, 8, n_train), q, 20, 8)
    return time.perf_counter() - t0


def morphometry(px: int) -> float:
    """ms per patch for a cell with a nucleus, ``px`` pixels square."""
    yy, xx = np.mgrid[:px, :px] - (px - 1) / 2
    img = np.full((px, px, 3), 245, np.uint8)
    img[xx**2 + yy**2 <= (px / 3) ** 2] = (225, 160, 200)
    img[xx**2 + yy**2 <= (px / 8) ** 2] = (70, 40, 120)
    t0 = time.perf_counter()
    for _ in range(200):
        measure_patch(img, 0.5)
    return (time.perf_counter() - t0) / 200 * 1000


def main() -> None:
    rng = np.random.default_rng(0)
    out = {
        "content_check_ms": {n: content_check(n, rng) for n in (20_000, 200_000)},
        "knn_s": {n: knn(n, rng) for n in (2_000, 20_000)},
        "morphometry_ms_per_patch": {px: morphometry(px) for px in (32, 96)},
        "cpus": os.cpu_count(),
        "command": "python benchmarks/eval_growth.py",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eval_growth.json").write_text(json.dumps(out, indent=2))
    c, k, m = out["content_check_ms"], out["knn_s"], out["morphometry_ms_per_patch"]
    md = [
        "# Growth of the evaluation's added costs",
        "",
        f"`{out['command']}` ({out['cpus']} CPUs).",
        "",
        "| cost | small | large |",
        "|---|---|---|",
        f"| content leak check, 20,000 vs 200,000 images (20% tested) | {c[20_000]:.1f} ms | "
        f"{c[200_000]:.1f} ms |",
        f"| weighted kNN, 2,000 queries x 2,000 vs 20,000 train rows | {k[2_000]:.2f} s | "
        f"{k[20_000]:.2f} s |",
        f"| morphometry, 32 vs 96 px patches | {m[32]:.2f} ms/patch | {m[96]:.2f} ms/patch |",
    ]
    (RESULTS / "eval_growth.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
