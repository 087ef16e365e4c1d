"""Per-job wall time of `tile` and `cells` on real microscope fields, as a user runs them.

    python benchmarks/job_overhead.py [--label after] [--repeats 3] [--many 20] [--repo CHECKOUT]

A sample sheet of BCCD blood-smear fields (640 x 480 JPEG, mpp 0.07 in the sheet) with
configs/blood_smear.yaml, no pretraining, no backbones, MLflow on (config.yaml's default
SQLite store). Jobs are timed from outside, as the user waits for them: ``snakemake --cores 1
<the jobs' outputs>`` timed, minus the same command once the outputs exist ("nothing to be
done": parsing the workflow and building the DAG), divided by the number of jobs. So the figure
is a job from process start to exit (interpreter, imports, MLflow run, work) plus its share of
whatever the workflow does once per run (sending spooled MLflow runs). Measured for one field
and for ``--many`` fields, and for one specimen made of ``--specimen`` fields (one sheet row
naming their folder); repeated with fresh results folders, the median is reported.
``--label`` names the row (e.g. the commit measured); rows accumulate in
benchmarks/results/job_overhead.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CYTOFM_SHARED_DATA", REPO.parent / "shared" / "data"))
IMAGES = DATA / "bccd_blood_dev" / "images"
FIELD = IMAGES / "BloodImage_00000.jpg"
RESULTS = REPO / "benchmarks" / "results"


def timed(args: list[str], env: dict, cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return time.perf_counter() - t0


def _time_jobs(work: Path, repo: Path, rows: list[tuple[str, str]]) -> dict[str, float]:
    """Seconds per job of tiling then detecting the sheet rows (slide id, path), one job at a
    time, and the plan-only time of the same command."""
    sheet = work / "sheet.tsv"
    sheet.write_text("slide_id\tpath\tmpp\n" + "".join(f"{s}\t{p}\t0.07\n" for s, p in rows))
    cfg = work / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "results": str(work / "res"),
                "samples": str(sheet),
                "demo": {"enabled": False},
                "pretrain": {"enabled": False},
                "backbones": {},
            }
        )
    )
    exe = str(Path(sys.executable).with_name("snakemake"))
    base = ["--cores", "1", "--configfile", "configs/blood_smear.yaml", str(cfg)]
    env = {**os.environ, "SLURM_CONF": "/dev/null", "PYTHONPATH": str(repo)}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = {}
    for rule, folder in (("tile", "tiles"), ("cells", "cells")):
        targets = [str(work / "res" / folder / f"{s}.zarr") for s, _ in rows]
        total = timed([exe, *targets, *base], env, repo)
        idle = timed([exe, *targets, *base], env, repo)  # outputs exist: plan only
        out[rule] = (total - idle) / len(rows)
        out[f"{rule}_plan"] = idle
    return out


def one_run(work: Path, repo: Path, n: int) -> dict[str, float]:
    """Seconds per job of ``n`` fields, each its own sheet row (one job per field)."""
    fields = sorted(IMAGES.glob("*.jpg"))[:n]
    return _time_jobs(work, repo, [(f"field{i}", str(f)) for i, f in enumerate(fields)])


def specimen_run(work: Path, repo: Path, n: int) -> dict[str, float]:
    """Seconds of the one tile and one cells job of a specimen made of ``n`` fields (a sheet
    row naming their folder)."""
    folder = work / "specimen"
    folder.mkdir()
    for f in sorted(IMAGES.glob("*.jpg"))[:n]:
        (folder / f.name).symlink_to(f)
    return _time_jobs(work, repo, [("specimen", str(folder))])


def git_commit(repo: Path) -> str:
    cmd = ["git", "rev-parse", "--short", "HEAD"]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=60).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="current")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--many", type=int, default=20, help="fields in the second measurement")
    ap.add_argument("--specimen", type=int, default=100,
                    help="fields of the specimen in the third measurement (0 = skip)")  # fmt: skip
    ap.add_argument("--repo", type=Path, default=REPO,
                    help="checkout whose workflow and package to time (e.g. a git worktree of "
                    "an older commit)")  # fmt: skip
    args = ap.parse_args()
    if not FIELD.is_file():
        sys.exit(f"{FIELD} not found: set CYTOFM_SHARED_DATA to the folder holding bccd_blood_dev")
    runs, many, specimen = [], [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(Path(tmp), args.repo.resolve(), 1))
        with tempfile.TemporaryDirectory() as tmp:
            many.append(one_run(Path(tmp), args.repo.resolve(), args.many))
        if args.specimen:
            with tempfile.TemporaryDirectory() as tmp:
                specimen.append(specimen_run(Path(tmp), args.repo.resolve(), args.specimen))
    row = {
        "label": args.label,
        "commit": git_commit(args.repo),
        "tile_s": statistics.median(r["tile"] for r in runs),
        "cells_s": statistics.median(r["cells"] for r in runs),
        "plan_s": statistics.median(r["tile_plan"] for r in runs),
        "many": args.many,
        "tile_many_s": statistics.median(r["tile"] for r in many),
        "cells_many_s": statistics.median(r["cells"] for r in many),
        "runs": runs,
        "runs_many": many,
        **(
            {
                "specimen": args.specimen,
                "tile_specimen_s": statistics.median(r["tile"] for r in specimen),
                "cells_specimen_s": statistics.median(r["cells"] for r in specimen),
                "runs_specimen": specimen,
            }
            if specimen
            else {}
        ),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "job_overhead.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    rows = [r for r in rows if r["label"] != args.label] + [row]
    path.write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Per-job wall time on 640 x 480 fields (BCCD, configs/blood_smear.yaml)",
        "",
        "`python benchmarks/job_overhead.py --label <name>`: jobs timed from outside "
        "(`snakemake --cores 1 <outputs>` minus the same command with nothing to do, divided by "
        "the number of jobs), for one field and for N fields, so the figure includes each job's "
        "share of what a workflow does once (sending spooled MLflow runs). Median of "
        f"{args.repeats} fresh runs, MLflow on (SQLite). Goal: under 1.5 s a job. The last "
        "columns: one specimen made of M fields (a sheet row naming their folder), whose "
        "`tile` and `cells` are one job each, against M rows of one field each (M x the "
        "per-field job time).",
        "",
        "| version | commit | tile, 1 field, s/job | cells, 1 field, s/job | N | tile, N fields, "
        "s/job | cells, N fields, s/job | plan (not a job), s | M | tile, specimen of M "
        "fields, s | cells, specimen of M fields, s | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(r, key):
        return f"{r[key]:.2f}" if key in r else "-"

    for r in rows:
        lines.append(
            f"| {r['label']} | {r['commit']} | {r['tile_s']:.2f} | {r['cells_s']:.2f} | "
            f"{r.get('many', '-')} | {cell(r, 'tile_many_s')} | {cell(r, 'cells_many_s')} | "
            f"{r['plan_s']:.2f} | {r.get('specimen', '-')} | {cell(r, 'tile_specimen_s')} | "
            f"{cell(r, 'cells_specimen_s')} | {r['machine']} |"
        )
    (RESULTS / "job_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
