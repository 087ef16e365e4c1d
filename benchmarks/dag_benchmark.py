"""Workflow planning cost with many slides, a load run, and how much one new slide costs.

    python benchmarks/dag_benchmark.py                      # 1,000-slide plan, then 1,000 + 1
    python benchmarks/dag_benchmark.py --plan-slides 1000 --run-slides 100
    SLURM_CONF=/dev/null python benchmarks/dag_benchmark.py # see "start-up" below

1. Plan: a sample sheet of N tiny synthetic slides (one small pyramidal TIFF, hard-linked N
   times), split 80/10/10, with pretraining, two backbones and cell embedding configured; time
   of `snakemake -n` (DAG build + dry run) and the number of jobs it plans.
2. Load and rerun: M tiny slides really run through tiling and cell extraction (`--cores 2`),
   every job checked to have succeeded; then the time of a no-op rerun (`snakemake`, DAG build
   included, "Nothing to be done") and of a no-op dry run, and the jobs planned after one
   slide is added to the sheet.

Start-up: the SLURM executor plugin, when installed, runs `scontrol` while snakemake starts.
On a machine with SLURM's client tools but no controller answering (a CI machine after the
local-cluster test), that waits ~9 s on every command; `SLURM_CONF=/dev/null` makes it fail
at once, as on a workstation without SLURM or a login node whose controller answers. The
start-up with and without the probe is recorded either way.

Writes benchmarks/results/dag_benchmark.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _slide(path: Path) -> None:
    from cytofm.synthetic.slide import write_pyramidal_tiff

    rng = np.random.default_rng(0)
    rgb = np.full((768, 768, 3), 236, np.uint8)
    for _ in range(12):  # a few dark blobs so cell detection has something to find
        y, x = rng.integers(40, 728, 2)
        yy, xx = np.ogrid[:768, :768]
        rgb[(yy - y) ** 2 + (xx - x) ** 2 < 14**2] = (70, 50, 120)
    write_pyramidal_tiff(path, rgb, 0.5, quality=90)


def _sheet(folder: Path, n: int, template: Path) -> Path:
    rows = ["slide_id\tpath\tmpp\tpatient_id\tsplit"]
    for i in range(n):
        target = folder / f"s{i:05d}.tif"
        if not target.exists():
            os.link(template, target)
        split = "train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test")
        rows.append(f"s{i:05d}\t{target.name}\t\tP{i // 2:05d}\t{split}")
    sheet = folder / "slides.tsv"
    sheet.write_text("\n".join(rows) + "\n")
    return sheet


def _config(folder: Path, sheet: Path, results: Path, pretrain: bool) -> Path:
    cfg = folder / "config.yaml"
    cfg.write_text(
        f"results: {results}\nsamples: {sheet}\ndemo: {{enabled: false}}\n"
        f"pretrain: {{enabled: {str(pretrain).lower()}, probe: {{dataset: ''}}}}\n"
        "embed: {sources: [cells]}\nevaluate: {tasks: {}, slide_tasks: {}}\n"
        "mlflow: {tracking_uri: none}\n"
    )
    return cfg


def _snakemake(cfg: Path, *args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [SNAKEMAKE, "--cores", "2", "--configfile", str(cfg), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    return seconds, proc.stdout + proc.stderr


def _planned(output: str) -> dict[str, int]:
    m = re.search(r"Job stats:\n(.*?)\n\s*total\s+(\d+)", output, re.S)
    if not m:
        return {}
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", m.group(1), re.M)}


def _localrules() -> set[str]:
    """The Snakefile's localrules: they run in the submitting process, never through sbatch."""
    text = (REPO / "Snakefile").read_text()
    block = re.search(r"^localrules:\n((?:\s+\w+,?\n)+)", text, re.M)
    return set(re.findall(r"(\w+)", block.group(1)))


GROUPED = ("tile", "cells")  # profiles/slurm's group `slides`


def _run(folder: Path, args: list[str], env: dict | None = None) -> tuple[float, str]:
    """snakemake with ``folder`` as its working directory (its .snakemake holds the records
    of this cohort, not the repository's); the Snakefile and config.yaml are the repository's."""
    folder = folder / "workdir"  # beside the cohort's own config.yaml
    folder.mkdir(exist_ok=True)
    link = folder / "config.yaml"
    if not link.exists():
        link.symlink_to(REPO / "config.yaml")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, **(env or {})},
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    return seconds, proc.stdout + proc.stderr


def _finish_cohort(folder: Path, cfg: Path, n: int) -> dict:
    """Make the cohort's every job look finished to Snakemake as a real run leaves it: each
    job recorded as run (``snakemake --touch``, which writes the same metadata records -
    code, params, inputs, software - as running the job) and each output created, in the
    order the jobs ran (inputs older than outputs). The outputs are empty files and folders:
    Snakemake's rerun checks their existence, times and records, never their contents.
    Slides' tiling and cells are recorded 1,000 slides at a time: Snakemake's scheduler takes
    time that grows with the square of the jobs it holds (37 s for 2,000 jobs, 274 s for
    6,000), the rest of the workflow after them."""
    results = folder / "results"
    t0, made = time.perf_counter(), 0
    parts = [
        [str(results / kind / f"s{i:05d}{ext}") for i in range(a, min(a + 1000, n))
         for kind, ext in (("cells", ".zarr"), ("qc", ".png"))]
        for a in range(0, n, 1000)
    ]  # fmt: skip
    for targets in [*parts, []]:
        _, out = _run(folder, ["--cores", "2", "--configfile", str(cfg), "--touch", *targets])
        made += _make_outputs(folder, out)
    return {"touch_s": time.perf_counter() - t0, "outputs": made}


def _make_outputs(folder: Path, out: str) -> int:
    made = 0
    for listed in re.findall(r"Output files not touched because they don't exist: (.*)", out):
        for name in listed.split(", "):
            path = Path(name.strip())
            if not path.is_absolute():
                path = folder / "workdir" / path
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix in ("", ".zarr"):  # directory() outputs: stores, model folders
                path.mkdir(exist_ok=True)
            else:
                path.touch()
            made += 1
    return made


def cohort(sizes: list[int], tmp: Path, template: Path) -> dict:
    """At each size, in one sitting: ``snakemake -n`` locally and under profiles/slurm (jobs,
    sbatch submissions), the no-op rerun and dry run of the finished cohort, and what adding
    one slide at the end of the sheet plans."""
    local_rules, out = _localrules(), {}
    for n in sizes:
        folder = tmp / f"cohort{n}"
        folder.mkdir()
        cfg = _config(folder, _sheet(folder, n, template), folder / "results", True)
        plan_s, text = _run(folder, ["--cores", "2", "--configfile", str(cfg), "-n"])
        jobs = _planned(text)
        slurm_s, text = _run(
            folder,
            ["--profile", str(REPO / "profiles" / "slurm"), "--configfile", str(cfg), "-n"],
        )
        groups = len(re.findall(r"Group job slides \(jobs in", text))
        single = {r: c for r, c in _planned(text).items() if r not in (*GROUPED, *local_rules)}
        finished = _finish_cohort(folder, cfg, n)
        noop_s, text = _run(folder, ["--cores", "2", "--configfile", str(cfg)])
        assert "Nothing to be done" in text, text[-3000:]
        noop_dry_s, text = _run(folder, ["--cores", "2", "--configfile", str(cfg), "-n"])
        assert "Nothing to be done" in text, text[-3000:]
        sheet = folder / "slides.tsv"  # one new slide at the end, outside the pretraining splits
        os.link(template, folder / "new.tif")
        sheet.write_text(sheet.read_text() + "new\tnew.tif\t\tPnew\ttest\n")
        add_s, text = _run(folder, ["--cores", "2", "--configfile", str(cfg), "-n"])
        out[n] = {
            "jobs": jobs,
            "plan_s": plan_s,
            "slurm_plan_s": slurm_s,
            "submissions": groups + sum(single.values()),
            "submissions_by_kind": {"groups of slides": groups, **single},
            "finished": finished,
            "noop_rerun_s": noop_s,
            "noop_dry_run_s": noop_dry_s,
            "after_adding_one_slide": {"dry_run_s": add_s, "jobs": _planned(text)},
        }
        print(f"cohort {n}: {json.dumps(out[n])}", flush=True)
    return out


# where `snakemake -n` spends its time: (label, file fragment, function), cumulative seconds
PROFILE_PARTS = (
    ("building the DAG (jobs, wildcards, dependencies, file checks)", "snakemake/workflow.py",
     "_build_dag"),
    ("  of which calling input and params functions", "snakemake/rules.py",
     "apply_input_function"),
    ("  of which post-processing the DAG", "snakemake/dag.py", "postprocess"),
    ("evaluating each job's resources", "snakemake/jobs.py", "resources"),
    ("  of which the size of every input file", "snakemake/iocontainers.py", "size_files"),
    ("printing the dry run's jobs (their resources included)", "snakemake/executors/dryrun.py",
     "printjob"),
)  # fmt: skip
SNAKEMAKE_DISK_DEFAULT = "disk_mb=max(2*input.size_mb, 1000)"


def profile_plan(sizes: list[int], tmp: Path, template: Path) -> dict:
    """``snakemake -n`` at each size as shipped and with Snakemake's own disk_mb default, then
    a cProfile of the largest as shipped, summed into where the time goes."""
    import pstats

    out: dict = {"sizes": {}}
    for n in sizes:
        folder = tmp / f"profile{n}"
        folder.mkdir()
        cfg = _config(folder, _sheet(folder, n, template), folder / "results", True)
        shipped, text = _snakemake(cfg, "-n")
        before, _ = _snakemake(cfg, "-n", "--default-resources", "mem_mb=2000",
                               SNAKEMAKE_DISK_DEFAULT)  # fmt: skip
        jobs = sum(_planned(text).values())
        out["sizes"][n] = {"jobs": jobs, "dry_run_s": shipped, "disk_default_dry_run_s": before}
        print(f"profile {n} slides, {jobs} jobs: {shipped:.1f} s ({before:.1f} s before)")
    prof = tmp / "plan.prof"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), SNAKEMAKE, "-n", "--cores", "2",
           "--configfile", str(cfg)]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=3600, check=True)
    stats = pstats.Stats(str(prof)).stats
    total = max(ct for (_, _, _), (_, _, _, ct, _) in stats.items())
    parts = {}
    for label, where, func in PROFILE_PARTS:
        parts[label] = sum(
            ct for (f, _, name), (_, _, _, ct, _) in stats.items() if where in f and name == func
        )
    own = sum(
        tt
        for (f, _, _), (_, _, tt, _, _) in stats.items()
        if f.startswith(str(REPO)) and "/.venv/" not in f
    )
    parts["cytofm's own code (the plan, input function bodies, the Snakefile)"] = own
    out["profile"] = {"slides": sizes[-1], "total_s": total, "parts_s": parts}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan-slides", type=int, default=1000)
    ap.add_argument("--run-slides", type=int, default=1000)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--startup-only", action="store_true", help="only re-measure start-up")
    ap.add_argument(
        "--profile-slides",
        type=int,
        nargs="*",
        default=[],
        help="only profile planning at these sizes (kept beside the last full run's figures)",
    )
    ap.add_argument(
        "--cohort",
        type=int,
        nargs="*",
        default=[],
        help="plan, SLURM submissions and no-op rerun at these sizes, in one sitting",
    )
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args()
    if args.report_only:  # the Markdown again from the JSON
        _write(json.loads((Path(args.out) / "dag_benchmark.json").read_text()), Path(args.out))
        return
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    # Fixed start-up cost of every snakemake command, before any DAG work: imports, plus the
    # SLURM executor plugin's probe of the cluster (it runs `scontrol` when SLURM's client
    # tools are installed, which waits ~9 s for a controller that is not running).
    machine_env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    for key, env in (
        ("startup_s", machine_env),
        ("startup_without_slurm_probe_s", {**machine_env, "SLURM_CONF": "/dev/null"}),
    ):
        t0 = time.perf_counter()
        subprocess.run(
            [SNAKEMAKE, "--version"], capture_output=True, check=True, env=env, timeout=300
        )
        result[key] = time.perf_counter() - t0
    result["slurm_conf"] = os.environ.get("SLURM_CONF", "")
    print(
        f"start-up {result['startup_s']:.1f} s, {result['startup_without_slurm_probe_s']:.1f} s "
        "without the SLURM plugin's probe"
    )
    if args.cohort:  # plan / submissions / no-op rerun, kept beside the other figures
        old = json.loads((Path(args.out) / "dag_benchmark.json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            template = Path(tmp) / "template.tif"
            _slide(template)
            old["cohort"] = {"sizes": cohort(args.cohort, Path(tmp), template)}
        old["cohort"]["startup_s"] = result["startup_without_slurm_probe_s"]
        old["cohort"]["slurm_conf"] = result["slurm_conf"]
        _write(old, Path(args.out))
        return
    if args.profile_slides:  # where planning goes, beside an earlier full run's figures
        old = json.loads((Path(args.out) / "dag_benchmark.json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            template = Path(tmp) / "template.tif"
            _slide(template)
            old["planning_profile"] = profile_plan(args.profile_slides, Path(tmp), template)
        old["planning_profile"]["startup_s"] = result["startup_without_slurm_probe_s"]
        _write(old, Path(args.out))
        return
    if args.startup_only:  # refresh the start-up figures of an earlier full run
        old = json.loads((Path(args.out) / "dag_benchmark.json").read_text())
        old.update({k: result[k] for k in result if k.startswith("startup") or k == "machine"})
        old.pop("slurm_plugin_import_s", None)
        _write(old, Path(args.out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        template = tmp / "template.tif"
        _slide(template)

        plan = tmp / "plan"
        plan.mkdir()
        cfg = _config(plan, _sheet(plan, args.plan_slides, template), plan / "results", True)
        seconds, out = _snakemake(cfg, "-n")
        jobs = _planned(out)
        result["plan"] = {"slides": args.plan_slides, "dry_run_s": seconds, "jobs": jobs}
        print(f"plan {args.plan_slides} slides: {seconds:.1f} s, {sum(jobs.values())} jobs")

        run = tmp / "run"
        run.mkdir()
        cfg = _config(run, _sheet(run, args.run_slides, template), run / "results", False)
        run_s, out = _snakemake(cfg)
        done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", out)
        stores = {
            k: len(list((run / "results" / k).glob("*.zarr/zarr.json"))) for k in ("tiles", "cells")
        }
        assert stores == {"tiles": args.run_slides, "cells": args.run_slides}, stores
        noop_s, out = _snakemake(cfg)
        assert "Nothing to be done" in out, out[-2000:]
        noop_dry_s, out = _snakemake(cfg, "-n")
        assert "Nothing to be done" in out, out[-2000:]
        _sheet(run, args.run_slides + 1, template)
        add_s, out = _snakemake(cfg, "-n")
        result["rerun"] = {
            "slides": args.run_slides,
            "run_s": run_s,
            "steps_done": done[-1][0] if done else None,
            "stores": stores,
            "noop_rerun_s": noop_s,
            "noop_dry_run_s": noop_dry_s,
            "after_adding_one_slide": {"dry_run_s": add_s, "jobs": _planned(out)},
        }
        print(f"run {args.run_slides}: {run_s:.0f} s; no-op {noop_s:.1f} s; +1: {_planned(out)}")
    _write(result, Path(args.out))


def _write(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dag_benchmark.json").write_text(json.dumps(result, indent=2))
    p, r = result["plan"], result["rerun"]
    probe = result["startup_s"] - result["startup_without_slurm_probe_s"]
    lines = [
        "# Workflow planning, reruns and SLURM submissions with many slides",
        "",
        f"Machine: {result['machine']}",
        "",
        "Every figure includes the start-up of the `snakemake` command "
        f"({result['startup_without_slurm_probe_s']:.1f} s for `snakemake --version`). "
        + (
            "Measured with SLURM_CONF=/dev/null: this machine has SLURM's client tools but no "
            "controller, so the SLURM executor plugin's `scontrol` probe adds "
            f"{probe:.1f} s to every command here (on any such machine; not on a "
            "workstation without SLURM, nor on a cluster whose controller answers)."
            if result["slurm_conf"] == "/dev/null"
            else f"The SLURM executor plugin's `scontrol` probe took {probe:.1f} s of it."
        ),
        "",
        f"- Plan of {p['slides']:,} slides (tile, cells, 2 backbones x cell embedding, "
        f"pretraining): `snakemake -n` {p['dry_run_s']:.1f} s, {sum(p['jobs'].values()):,} "
        f"jobs {p['jobs']}",
        f"- Load: {r['slides']:,} tiny slides through tiling and cells (`--cores 2`): "
        f"{r['run_s']:.0f} s, {r['steps_done']} steps done, stores written {r['stores']}",
        f"- **No-op rerun** afterwards (`snakemake --cores 2`, DAG build included, nothing to "
        f"do): **{r['noop_rerun_s']:.1f} s**; no-op dry run `snakemake -n`: "
        f"{r['noop_dry_run_s']:.1f} s",
        f"- After adding one slide: {r['after_adding_one_slide']['jobs']} planned "
        f"({r['after_adding_one_slide']['dry_run_s']:.1f} s)",
    ]
    if "cohort" in result:
        earlier = ["", "## Earlier figures (the load run is of tiling and cells, unchanged since)"]
        lines = lines[:4] + cohort_lines(result["cohort"], r) + earlier + lines[4:]
    if "planning_profile" in result:
        lines += profile_lines(result["planning_profile"], "## Where planning goes")
    if "planning_profile_before" in result:
        lines += profile_lines(
            result["planning_profile_before"],
            "## Where planning went before (each job's paths matched against every slide id)",
            BEFORE,
        )
    (out_dir / "dag_benchmark.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def on_paper(sizes: dict, key: str, at: int) -> float:
    """A least-squares line through the measured (slides, seconds), read at ``at`` slides."""
    x = np.array([int(n) for n in sizes], float)
    y = np.array([r[key] for r in sizes.values()], float)
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept + slope * at)


def cohort_lines(c: dict, load: dict) -> list[str]:
    sizes = {str(n): r for n, r in c["sizes"].items()}  # JSON keys are strings
    ns = sorted(sizes, key=int)
    lines = [
        "",
        "## Plan, no-op rerun and SLURM submissions",
        "",
        "`SLURM_CONF=/dev/null python benchmarks/dag_benchmark.py --cohort "
        + " ".join(ns)
        + "`, the sizes in one sitting on the same machine: tiny synthetic slides (one "
        "pyramidal TIFF hard-linked), pretraining and three backbones' cell embedding "
        "(`embed.slides_per_job` 64), every `snakemake` command's start-up "
        f"({c['startup_s']:.1f} s) included. Submissions: `snakemake --profile "
        "profiles/slurm -n` (its groups of 16 slides' tiling and cells, plus every other job "
        "but the Snakefile's localrules). No-op rerun: `snakemake --cores 2` on the finished "
        "cohort, nothing to do.",
        "",
        "| slides | jobs planned | `snakemake -n` | ms per job | sbatch submissions "
        "(SLURM profile) | no-op rerun | no-op `snakemake -n` |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in ns:
        r = sizes[n]
        jobs = sum(r["jobs"].values())
        lines.append(
            f"| {int(n):,} | {jobs:,} | {r['plan_s']:.1f} s | {1000 * r['plan_s'] / jobs:.2f} | "
            f"{r['submissions']:,} | {r['noop_rerun_s']:.1f} s | {r['noop_dry_run_s']:.1f} s |"
        )
    big = sizes[ns[-1]]
    add = big["after_adding_one_slide"]
    lines += [
        "",
        f"At {int(ns[-1]):,} slides: jobs by rule {big['jobs']}; submissions "
        f"{big['submissions_by_kind']}. One slide added at the end of the sheet (split test) "
        f"plans {add['jobs']} ({add['dry_run_s']:.1f} s): its tiling and cells, the last "
        "embedding job of each backbone, the report.",
        "",
        "The finished cohort is made as Snakemake would find it after running: every job "
        "recorded by `snakemake --touch` (the same metadata records - code, params, inputs, "
        "software - as a real run writes) and every output created in the order the jobs ran, "
        "as an empty file or folder (Snakemake's rerun checks existence, times and records, "
        f"not contents). Running {int(ns[-1]):,} slides' tiling and cell jobs for real would "
        f"take about {load['run_s'] * int(ns[-1]) / load['slides'] / 3600:.1f} hours on these "
        f"2 cores (the load run below: {load['run_s'] / 60:.1f} min for {load['slides']:,}). "
        f"Making it took {big['finished']['touch_s']:.0f} s at {int(ns[-1]):,} slides "
        f"({big['finished']['outputs']:,} outputs).",
        "",
        "### 100,000 slides, on paper",
        "",
        "A straight line through the three sizes (least squares), read at 100,000 slides: "
        f"`snakemake -n` {on_paper(sizes, 'plan_s', 100_000):.0f} s, no-op rerun "
        f"{on_paper(sizes, 'noop_rerun_s', 100_000):.0f} s; from {int(ns[0]):,} to "
        f"{int(ns[-1]):,} slides planning grew "
        f"{sizes[ns[-1]]['plan_s'] / sizes[ns[0]]['plan_s']:.1f}x for "
        f"{int(ns[-1]) // int(ns[0])}x the slides. Not run here: a 100,000-slide `snakemake -n` "
        f"holds about {10 * sum(big['jobs'].values()):,} jobs in one process.",
    ]
    return lines


BEFORE = (
    "Measured with the code before slides were embedded in jobs of 64 and before the slide "
    "wildcard's constraint changed: it was the list of the sheet's ids joined by '|', a regular "
    "expression as long as the cohort that every file path of every job was matched against "
    "and formatted with, so each match cost more as the cohort grew and planning grew faster "
    "than the jobs (ms per job below). Every slide's embedding was its own job per backbone "
    "(60% of the jobs)."
)


def profile_lines(pp: dict, title: str, note: str = "") -> list[str]:
    lines = [
        "",
        title,
        "",
        *([note, ""] if note else []),
        "`python benchmarks/dag_benchmark.py --profile-slides "
        + " ".join(str(n) for n in pp["sizes"])
        + "`: the same sheet and config as the cohort above (tile, cells, pretraining and three "
        "backbones' cell embedding), `snakemake -n` as shipped and with Snakemake's "
        f"own `{SNAKEMAKE_DISK_DEFAULT}` default resource, which the profiles now replace by a "
        f"constant; start-up (`snakemake --version`) {pp['startup_s']:.1f} s.",
        "",
        "| slides | jobs | `snakemake -n` | with Snakemake's disk_mb default | ms per job |",
        "|---|---|---|---|---|",
    ]
    for n, r in pp["sizes"].items():
        lines.append(
            f"| {int(n):,} | {r['jobs']:,} | {r['dry_run_s']:.1f} s | "
            f"{r['disk_default_dry_run_s']:.1f} s | {1000 * r['dry_run_s'] / r['jobs']:.2f} |"
        )
    p = pp["profile"]
    lines += [
        "",
        f"cProfile of `snakemake -n` at {p['slides']:,} slides as shipped ({p['total_s']:.1f} s "
        "under the profiler, which slows it; cumulative seconds; an "
        "'of which' row is part of the row above, and the resources row overlaps the "
        "printing row, which evaluates them again):",
        "",
        "| part | seconds | share |",
        "|---|---|---|",
    ]
    for label, sec in p["parts_s"].items():
        name = label.replace("  of which", "&nbsp;&nbsp;of which")
        lines.append(f"| {name} | {sec:.1f} | {sec / p['total_s']:.0%} |")
    return lines


if __name__ == "__main__":
    main()
