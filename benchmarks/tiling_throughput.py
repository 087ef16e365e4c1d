"""Tiling + cell-extraction throughput and peak memory, next to raw OpenSlide decode.

For each slide, in fresh processes, at 1 and at 2 threads:
  * raw decode: OpenSlide ``read_region`` over the whole slide, 512x512 px at a time, at the
    pyramid level the cell stage reads (the reference a reader cannot beat by much);
  * pipeline: ``run_tile`` then ``run_cells`` with tracking off, each in its own process as
    the workflow's jobs run them (time from the call to its return; openslide is imported
    before the clock, as for the raw decode: start-up is what benchmarks/job_overhead.py
    measures).
Both are reported as megapixels of slide area (level 0) per second; the figure of merit is
the pipeline on 2 threads over raw decode on 1.

Peak RSS of the stages' processes is measured on synthetic slides of growing
size (the canvas repeats, so larger slides hold proportionally more cells) to show memory is
bounded by tile and chunk size, not slide size.

    python benchmarks/tiling_throughput.py                    # CMU-1 + 12.5k/25k/50k px slides
    python benchmarks/tiling_throughput.py --sizes 10000      # quicker

Writes benchmarks/results/tiling_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CMU1 = REPO.parent / "shared" / "data" / "slides" / "cmu-1-small-region.svs"


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Unlike ru_maxrss, it does not inherit the
    parent's memory from before exec, so it measures the pipeline alone."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_decode(
    slide_path: str, patch_mpp: float, threads: int, reader: str = "openslide", repeats: int = 2
) -> dict:
    """The whole level, 512 x 512 px at a time, rows shared by ``threads`` threads; the
    fastest of ``repeats`` passes (the machine's noise only slows). ``reader``: OpenSlide's
    ``read_region`` (the reference), or cytofm's reader (tiles decoded directly where the
    file allows, each once: the plan covers the pass)."""
    from concurrent.futures import ThreadPoolExecutor

    import openslide

    from cytofm.wsi.reader import open_slide

    slide = open_slide(slide_path, "bench")
    level = slide.best_level(patch_mpp / slide.mpp)
    w0, h0 = slide.dimensions
    osr = openslide.OpenSlide(slide_path)
    lw, lh = osr.level_dimensions[level]
    ds = osr.level_downsamples[level]
    regions = [
        (x, y, min(512, lw - x), min(512, lh - y))
        for y in range(0, lh, 512)
        for x in range(0, lw, 512)
    ]

    def read(region) -> None:
        x, y, w, h = region
        if reader == "openslide":
            osr.read_region((int(x * ds), int(y * ds)), level, (w, h))
        else:
            slide.read_level(x, y, w, h, level)

    times = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            slide.plan_reads(level, regions)
            t0 = time.perf_counter()
            list(pool.map(read, regions))
            times.append(time.perf_counter() - t0)
    dt = min(times)
    return {
        "threads": threads,
        "level": level,
        "level_mpx": lw * lh / 1e6,
        "seconds": dt,
        "seconds_all": times,
        "slide_mpx": w0 * h0 / 1e6,
        "slide_mpx_per_s": w0 * h0 / 1e6 / dt,
        "level_mpx_per_s": lw * lh / 1e6 / dt,
    }


def _child_stage(stage: str, slide_path: str, workdir: str, threads: int) -> dict:
    """One stage as its Snakemake job runs it (``threads`` threads, tracking off), in this
    fresh process: seconds from the call to its return, and the process's peak memory."""
    os.environ["MLFLOW_TRACKING_URI"] = "none"
    import openslide  # noqa: F401  the reader's import, before the clock as in the raw decode

    from cytofm.config import CellsConfig, TilingConfig
    from cytofm.stages.cells import run_cells
    from cytofm.stages.tile import run_tile

    wd = Path(workdir)
    t0 = time.perf_counter()
    if stage == "tile":
        out = run_tile(
            slide_path, "bench", None, TilingConfig(), wd / "t.zarr", wd / "qc.png", threads=threads
        )
    else:
        out = run_cells(
            *(slide_path, "bench", None, wd / "t.zarr", CellsConfig(), wd / "c.zarr"),
            wd / "g.png",
            threads=threads,
        )
    seconds = time.perf_counter() - t0
    keep = ("slide_megapixels", "n_tiles", "n_tiles_total", "n_cells")
    return {
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        **{k: out[k] for k in keep if k in out},
    }


def _child_breakdown(slide_path: str, workdir: str) -> dict:
    """Where a job's time goes: ``tile`` then ``cells`` on 1 thread (so the parts add up),
    with the main steps timed; ``other`` is the rest of the call (opening the slide, store
    set-up, provenance)."""
    import importlib

    os.environ["MLFLOW_TRACKING_URI"] = "none"
    import openslide  # noqa: F401  as in _child_stage

    from cytofm.config import CellsConfig, TilingConfig

    spent: dict[str, float] = {}

    def timed(key: str, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - t0

        return wrapper

    def patch(target: str, key: str) -> None:
        module, _, name = target.rpartition(":")
        owner = importlib.import_module(module)
        *path, attr = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, attr, timed(key, getattr(owner, attr)))

    for target, key in {
        "cytofm.stages.tile:read_thumbnail": "tile: thumbnails (mask + QC view)",
        "cytofm.stages.tile:_find_tiles": "tile: mask and grid",
        "cytofm.stages.tile:draw_qc": "tile: QC drawing",
        "cytofm.stages.tile:_write_tile_store": "tile: store",
        "cytofm.wsi.reader:Slide.read_level": "cells: decode",
        "cytofm.cells.extract:resample_patches": "cells: patch resampling",
        "cytofm.store:PatchStoreWriter.append": "cells: store (waits for its writer thread)",
        "cytofm.store:PatchStoreWriter.close": "cells: store (waits for its writer thread)",
        "cytofm.stages.cells:patch_gallery": "cells: gallery",
    }.items():
        patch(target, key)
    import cytofm.stages.cells as cells_stage
    from cytofm.stages.tile import run_tile

    make = cells_stage.make_detector
    cells_stage.make_detector = lambda *a, **k: timed("cells: detection", make(*a, **k))
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    out = {}
    for stage in ("tile", "cells"):
        t0 = time.perf_counter()
        if stage == "tile":
            run_tile(slide_path, "bench", None, TilingConfig(), wd / "t.zarr", wd / "qc.png")
        else:
            cells_stage.run_cells(
                *(slide_path, "bench", None, wd / "t.zarr", CellsConfig(), wd / "c.zarr"),
                wd / "g.png",
            )
        total = time.perf_counter() - t0
        parts = {k: v for k, v in spent.items() if k.startswith(stage)}
        out.update(parts)
        out[f"{stage}: other"] = total - sum(parts.values())
        out[f"{stage}: total"] = total
    return out


def pipeline_run(slide_path: str, workdir: Path, threads: int) -> dict:
    """``tile`` then ``cells`` once, from scratch, each in its own process as the workflow
    runs them."""
    import shutil

    wd = workdir / f"threads{threads}"
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    tile = _run_child("stage", "tile", slide_path, str(wd), str(threads))
    cells = _run_child("stage", "cells", slide_path, str(wd), str(threads))
    return {
        "threads": threads,
        "slide_mpx": tile["slide_megapixels"],
        "tile_seconds": tile["seconds"],
        "cells_seconds": cells["seconds"],
        "seconds": tile["seconds"] + cells["seconds"],
        "n_tiles": tile["n_tiles"],
        "n_tiles_total": tile["n_tiles_total"],
        "n_cells": cells["n_cells"],
        "tile_peak_rss_mb": tile["peak_rss_mb"],
        "cells_peak_rss_mb": cells["peak_rss_mb"],
        "peak_rss_mb": max(tile["peak_rss_mb"], cells["peak_rss_mb"]),
    }


def _fastest(runs: list[dict]) -> dict:
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["seconds_all"] = [r["seconds"] for r in runs]
    best["slide_mpx_per_s"] = best["slide_mpx"] / best["seconds"]
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return best


def _run_child(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child_make(path: str, side: str) -> dict:
    _make_large(Path(path), int(side))
    return {"bytes": Path(path).stat().st_size}


def _make_large(path: Path, side: int) -> None:
    from cytofm.synthetic.slide import class_mix, render_slide_canvas, write_pyramidal_tiff

    rng = np.random.default_rng(0)
    canvas = render_slide_canvas(
        4096,
        4096,
        0.25,
        class_mix(True, 0.08),
        cells_per_mm2=110,
        cluster_prob=0.25,
        debris_per_mm2=60,
        rng=rng,
    )
    write_pyramidal_tiff(path, canvas.rgb, 0.25, shape=(side, side))


def measure(slide: Path, name: str, workdir: Path, rounds: int = 3) -> dict:
    """Raw decode and the pipeline, at 1 and 2 threads, in interleaved rounds (so a slow
    spell of the machine slows both alike); the fastest of each."""
    from cytofm.config import CellsConfig

    mpp = str(CellsConfig().patch_mpp)
    decode: dict[int, list[dict]] = {1: [], 2: []}
    pipe: dict[int, list[dict]] = {1: [], 2: []}
    direct: list[dict] = []
    for _ in range(rounds):
        for t in (1, 2):
            decode[t].append(_run_child("decode", str(slide), mpp, str(t), "openslide"))
            pipe[t].append(pipeline_run(str(slide), workdir, t))
        direct.append(_run_child("decode", str(slide), mpp, "1", "cytofm"))
    d = {t: min(runs, key=lambda r: r["seconds"]) for t, runs in decode.items()}
    fastest_direct = min(direct, key=lambda r: r["seconds"])
    p = {t: _fastest(runs) for t, runs in pipe.items()}
    for t in d:
        d[t]["seconds_all"] = [r["seconds"] for r in decode[t]]
    return {
        "slide": name,
        "raw_decode": d[1],
        "raw_decode_2_threads": d[2],
        "pipeline_1_thread": p[1],
        "pipeline": p[2],
        "cytofm_decode": fastest_direct,
        "breakdown_1_thread": _run_child("breakdown", str(slide), str(workdir / "breakdown")),
        # the figure of merit: the job on the rule's 2 threads against a plain 1-thread decode
        "ratio_pipeline_to_raw_decode": p[2]["slide_mpx_per_s"] / d[1]["slide_mpx_per_s"],
        "ratio_1_thread": p[1]["slide_mpx_per_s"] / d[1]["slide_mpx_per_s"],
        "ratio_2_threads_each": p[2]["slide_mpx_per_s"] / d[2]["slide_mpx_per_s"],
        "thread_scaling": p[2]["slide_mpx_per_s"] / p[1]["slide_mpx_per_s"],
        "ratio_to_cytofm_decode": p[2]["slide_mpx_per_s"] / fastest_direct["slide_mpx_per_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[12500, 25000, 50000],
        help="sides (px) of synthetic slides at 0.25 um/px",
    )
    ap.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "tiling_throughput"
    )
    args = ap.parse_args()
    if args.child:
        mode, *rest = args.child
        children = {
            "decode": lambda path, mpp, t, reader: _child_decode(path, float(mpp), int(t), reader),
            "stage": lambda stage, path, wd, t: _child_stage(stage, path, wd, int(t)),
            "make": _child_make,
            "breakdown": _child_breakdown,
        }
        result = children[mode](*rest)
        print(json.dumps(result))
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if CMU1.is_file():
            (tmp / "cmu1").mkdir()
            rows.append(measure(CMU1, "CMU-1-small-region.svs (real, 0.499 um/px)", tmp / "cmu1"))
            print(json.dumps(rows[-1], indent=1), flush=True)
        for side in args.sizes:
            slide = tmp / f"synthetic_{side}.tif"
            t0 = time.perf_counter()
            _run_child("make", str(slide), str(side))  # in a child: keeps this process small
            print(
                f"wrote {side}x{side} slide in {time.perf_counter() - t0:.0f} s "
                f"({slide.stat().st_size / 1e6:.0f} MB)",
                flush=True,
            )
            (tmp / str(side)).mkdir()
            rows.append(measure(slide, f"synthetic {side}x{side} px (0.25 um/px)", tmp / str(side)))
            print(json.dumps(rows[-1], indent=1), flush=True)
            slide.unlink()
    meta = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "command": "python benchmarks/tiling_throughput.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [
        "Mpx/s of slide area (level 0). Raw decode: OpenSlide `read_region` over the level the "
        "cells stage reads, 512 px at a time. Pipeline: `run_tile` + "
        "`run_cells`, each in its own process as the workflow's jobs run them, timed from the "
        "call to its return, openslide imported before the clock as for the decode; peak "
        "RSS: the larger of the two processes'. Three rounds, each running the decode and "
        "the pipeline at 1 and 2 threads in turn, so a slow spell of the machine slows both; "
        "the fastest of each. "
        "**Ratio: the pipeline on 2 threads "
        "(`threads: 2` of the rules) / raw decode on 1 thread**; also each at 1 thread and "
        "each at 2 threads. cytofm decode: the same pass through cytofm's reader (tiled TIFF "
        "levels decoded straight from their tiles, the pixels OpenSlide gives), 1 thread, "
        "and the pipeline's ratio to it.",
        "",
        "| slide | slide Mpx | raw decode 1 thread | raw decode 2 threads | pipeline 1 thread "
        "| pipeline 2 threads | **ratio** | ratio 1 vs 1 thread | ratio 2 vs 2 threads "
        "| pipeline 2/1 thread scaling | tile + cells s (2 threads) | tiles kept | cells "
        "| peak RSS MB | cytofm decode 1 thread | ratio to it |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, p1, d, d2 = (
            r["pipeline"],
            r["pipeline_1_thread"],
            r["raw_decode"],
            r["raw_decode_2_threads"],
        )
        lines.append(
            f"| {r['slide']} | {p['slide_mpx']:.0f} | {d['slide_mpx_per_s']:.1f} (level "
            f"{d['level']}) | {d2['slide_mpx_per_s']:.1f} | {p1['slide_mpx_per_s']:.1f} | "
            f"{p['slide_mpx_per_s']:.1f} | **{r['ratio_pipeline_to_raw_decode']:.2f}** | "
            f"{r['ratio_1_thread']:.2f} | {r['ratio_2_threads_each']:.2f} | "
            f"{r['thread_scaling']:.2f}x | {p['tile_seconds']:.2f} + {p['cells_seconds']:.2f} | "
            f"{p['n_tiles']}/{p['n_tiles_total']} | {p['n_cells']} | "
            f"{max(p['peak_rss_mb'], p1['peak_rss_mb']):.0f} | "
            f"{r['cytofm_decode']['slide_mpx_per_s']:.1f} | {r['ratio_to_cytofm_decode']:.2f} |"
        )
    steps = list(rows[0]["breakdown_1_thread"]) if rows else []
    lines += [
        "",
        "Where the time goes: `tile` then `cells` on 1 thread (so the parts add up), seconds; "
        "*other*: opening the slide, store set-up, provenance.",
        "",
        "| step | " + " | ".join(r["slide"] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for step in steps:
        lines.append(
            f"| {step} | "
            + " | ".join(f"{r['breakdown_1_thread'].get(step, 0.0):.3f}" for r in rows)
            + " |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n\n" + json.dumps(meta) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
