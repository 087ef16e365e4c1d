"""Per-job wall time of `tile` and `cells` on one real microscope field, as a user runs them.

    python benchmarks/job_overhead.py [--label after] [--repeats 3] [--repo CHECKOUT]

A sample sheet of one BCCD blood-smear field (640 x 480 JPEG, mpp 0.07 in the sheet) with
configs/blood_smear.yaml, no pretraining, no backbones, MLflow on (config.yaml's default
SQLite store). Each job's time is measured from outside, as the user waits for it:
``snakemake --cores 1 <the job's output>`` timed, minus the same command once the output
exists ("nothing to be done": parsing the workflow and building the DAG), so the figure is
the job itself from process start to exit: interpreter, imports, MLflow run, work. Repeated
with fresh results folders; the median is reported. ``--label`` names the row (e.g. the
commit measured); rows accumulate in benchmarks/results/job_overhead.{md,json}.
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
FIELD = DATA / "bccd_blood_dev" / "images" / "BloodImage_00000.jpg"
RESULTS = REPO / "benchmarks" / "results"


def timed(args: list[str], env: dict, cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return time.perf_counter() - t0


def one_run(work: Path, repo: Path) -> dict[str, float]:
    sheet = work / "sheet.tsv"
    sheet.write_text(f"slide_id\tpath\tmpp\nfield0\t{FIELD}\t0.07\n")
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
    base = [exe, "--cores", "1", "--configfile", "configs/blood_smear.yaml", str(cfg)]
    env = {**os.environ, "SLURM_CONF": "/dev/null", "PYTHONPATH": str(repo)}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = {}
    for rule, target in (
        ("tile", work / "res" / "tiles" / "field0.zarr"),
        ("cells", work / "res" / "cells" / "field0.zarr"),
    ):
        total = timed([*base[:1], str(target), *base[1:]], env, repo)
        idle = timed([*base[:1], str(target), *base[1:]], env, repo)  # output exists: plan only
        out[rule] = total - idle
        out[f"{rule}_plan"] = idle
    return out


def git_commit(repo: Path) -> str:
    cmd = ["git", "rev-parse", "--short", "HEAD"]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="current")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repo", type=Path, default=REPO,
                    help="checkout whose workflow and package to time (e.g. a git worktree of "
                    "an older commit)")  # fmt: skip
    args = ap.parse_args()
    if not FIELD.is_file():
        sys.exit(f"{FIELD} not found: set CYTOFM_SHARED_DATA to the folder holding bccd_blood_dev")
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(Path(tmp), args.repo.resolve()))
    row = {
        "label": args.label,
        "commit": git_commit(args.repo),
        "tile_s": statistics.median(r["tile"] for r in runs),
        "cells_s": statistics.median(r["cells"] for r in runs),
        "plan_s": statistics.median(r["tile_plan"] for r in runs),
        "runs": runs,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "job_overhead.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    rows = [r for r in rows if r["label"] != args.label] + [row]
    path.write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Per-job wall time on one 640 x 480 field (BCCD, configs/blood_smear.yaml)",
        "",
        "`python benchmarks/job_overhead.py --label <name>`: each job timed from outside "
        "(`snakemake --cores 1 <output>` minus the same command with nothing to do), median of "
        f"{args.repeats} fresh runs, MLflow on (SQLite). Goal of the issue: under 1.5 s a job.",
        "",
        "| version | commit | tile job, s | cells job, s | plan (not a job), s | machine |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['commit']} | {r['tile_s']:.2f} | {r['cells_s']:.2f} | "
            f"{r['plan_s']:.2f} | {r['machine']} |"
        )
    (RESULTS / "job_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
