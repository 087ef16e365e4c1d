"""The default demo end to end, timed, with its headline numbers and their interval widths.

    python benchmarks/demo_run.py        # about 15 minutes on 2 CPU cores

Runs ``snakemake --cores all`` (what ``make demo`` runs) on config.yaml into
benchmarks/out/demo/, counts the jobs and wall time, and collects what the run measured:
the crop task's table and paired comparisons, the slide task's (attention MIL) table and
comparisons, cell detection against the ground truth and the pretraining probe. The demo is
sized so its headline comparisons are tight enough to read: 95% CI half-widths at most 0.06
for the crop task's full-label linear probe and 0.15 for the slide AUROC; the figures say
whether they are. Writes benchmarks/results/demo.{md,json} and the tables as CSV.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGETS = {"demo_cells": 0.06, "demo_abnormal": 0.15}


def run(out: Path, timeout: int) -> tuple[float, int, str]:
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [str(exe), "--cores", "all", "--config", f"results={out}"]
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / "demo.log"
    # what `make demo` does: MLflow tracking into the results folder, the machine's environment
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(
            cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout
        )
    seconds = time.perf_counter() - t0
    text = log.read_text()
    if proc.returncode:
        raise SystemExit(f"demo run failed; see {log}")
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", text)
    return seconds, int(done[-1][1]) if done else -1, " ".join(["snakemake", *cmd[1:]])


def headline(out: Path, task: str, setting: str) -> dict:
    summary = pd.read_csv(out / "eval" / task / "summary.csv", keep_default_na=False)
    comp = pd.read_csv(out / "eval" / task / "comparisons.csv")
    protocol = "abmil" if task == "demo_abnormal" else "linear"
    metric = "auroc" if protocol == "abmil" else "balanced_accuracy"
    rows = summary[
        (summary.protocol == protocol) & (summary.shots == "all") & (summary.fraction == "")
    ]
    entry = {"task": task, "setting": setting, "metric": metric, "backbones": {}}
    for r in rows.itertuples():
        lo, hi = getattr(r, f"{metric}_ci_low"), getattr(r, f"{metric}_ci_high")
        entry["backbones"][r.backbone] = {
            "mean": getattr(r, f"{metric}_mean"),
            "std": getattr(r, f"{metric}_std"),
            "ci95": [lo, hi],
            "half_width": (hi - lo) / 2,
        }
    c = comp[(comp.protocol == protocol) & (comp.block == "all") & (comp.metric == metric)]
    entry["differences"] = [
        {
            "pair": f"{d.backbone} - {d.versus}",
            "difference": float(d.difference),
            "ci95": [float(d.ci_low), float(d.ci_high)],
            "p_value": float(d.p_value),
            "p_holm": float(d.p_holm),
            "family_size": int(d.family_size),
            "verdict": d.verdict,
        }
        for d in c.itertuples()
    ]
    widest = max(b["half_width"] for b in entry["backbones"].values())
    entry["widest_half_width"] = widest
    entry["target_half_width"] = TARGETS[task]
    entry["meets_target"] = bool(widest <= TARGETS[task])
    return entry


def sizing(out: Path, extra: list[int], timeout: int) -> dict:
    """The headline half-widths under other pretraining draws: the finished demo gains the
    checkpoints of pretraining seeds ``extra`` (and their random controls, each initialised
    from its own seed) in the same results folder, and each checkpoint's results are
    summarised alone, as a demo run whose pretraining drew that checkpoint would show them."""
    import yaml

    from cytofm.eval.summary import summary_table

    seeds = [0, *extra]
    overlay = out.parent / "demo_sizing.yaml"
    overlay.write_text(yaml.safe_dump({"pretrain": {"seeds": seeds}}))
    names = [(s, f"cytofm_seed{s}" if i else "cytofm", f"random_seed{s}" if i else "random")
             for i, s in enumerate(seeds)]  # fmt: skip
    files = {
        task: {(s, b): out / "eval" / task / b / f"{protocol}.json" for s, *bs in names for b in bs}
        for task, protocol in (("demo_cells", "linear"), ("demo_abnormal", "abmil"))
    }
    exe = Path(sys.executable).with_name("snakemake")
    targets = [str(f) for per in files.values() for f in per.values()]
    cmd = [str(exe), "--cores", "all", "--configfile", "config.yaml", str(overlay),
           "--config", f"results={out}", "-p", *targets]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    t0 = time.perf_counter()
    with (out.parent / "demo_sizing.log").open("w") as fh:
        proc = subprocess.run(
            cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout
        )
    if proc.returncode:
        raise SystemExit(f"sizing run failed; see {out.parent / 'demo_sizing.log'}")
    rows = []
    for task, per in files.items():
        metric = "auroc" if task == "demo_abnormal" else "balanced_accuracy"
        for (seed, backbone), path in per.items():
            table = summary_table([path])
            r = table[(table.shots == "all") & table.fraction.isna()].iloc[0]
            lo, hi = r[f"{metric}_ci_low"], r[f"{metric}_ci_high"]
            rows.append({
                "task": task, "metric": metric, "pretraining_seed": seed, "backbone": backbone,
                "mean": float(r[f"{metric}_mean"]), "ci95": [float(lo), float(hi)],
                "half_width": float(hi - lo) / 2, "target_half_width": TARGETS[task],
            })  # fmt: skip
    return {
        "command": " ".join(["snakemake", *cmd[1:]]),
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }


def _relative(command: str) -> str:
    """A command as run from the repository (paths under it relative)."""
    return command.replace(f"{REPO}/", "")


def _seed0_matches(size: dict, heads: list[dict]) -> str:
    """Whether the carried-over sizing's seed-0 rows give this run's headline means."""
    means = {(h["task"], b): v["mean"] for h in heads for b, v in h["backbones"].items()}
    rows = [r for r in size["rows"] if r["pretraining_seed"] == 0]
    same = all(round(r["mean"], 4) == round(means[(r["task"], r["backbone"])], 4) for r in rows)
    return "match" if same else "do not match"


def sizing_lines(size: dict) -> list[str]:
    rows = size["rows"]
    met = sum(r["half_width"] <= r["target_half_width"] for r in rows)
    lines = [
        "",
        "## Sizing over pretraining draws",
        "",
        f"The run's results folder then gained further pretraining checkpoints "
        f"(`{_relative(size['command']).split(' -p ')[0]} -p` and the `linear.json` and "
        f"`abmil.json` of each checkpoint; the overlay sets `pretrain.seeds: "
        f"{sorted({r['pretraining_seed'] for r in rows})}`"
        f", {size['seconds'] / 60:.1f} min more), each summarised alone: what a demo run whose "
        "pretraining (and random initialisation) drew that seed would report. The targets hold "
        f"in {met} of {len(rows)} rows."
        + (
            " This table is carried over from the previous run (`--keep-sizing`); its seed-0 "
            f"rows {size['seed0_matches']} this run's headlines (means to 4 decimals)."
            if "carried_over" in size
            else ""
        ),
        "",
        "| task | metric | pretraining seed | backbone | mean [95% CI] | CI half-width | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["ci95"]
        ok = "met" if r["half_width"] <= r["target_half_width"] else "not met"
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['pretraining_seed']} | {r['backbone']} | "
            f"{r['mean']:.3f} [{lo:.3f}, {hi:.3f}] | {r['half_width']:.3f} | "
            f"<= {r['target_half_width']} ({ok}) |"
        )
    return lines


def clinical(out: Path) -> dict:
    """The demo's label tree, calibration, batch-leak probe and leave-one-stain-out figures."""

    def pick(csv: Path, protocol: str, block: str, metrics) -> dict:
        table = pd.read_csv(csv)
        table = table[(table.protocol == protocol) & (table.block == block)]
        return {
            b: {
                m: [float(r["mean"]), float(r["ci95_low"]), float(r["ci95_high"])]
                for _, r in rows.iterrows()
                if (m := r["metric"]) in metrics
            }
            for b, rows in table.groupby("backbone")
        }

    tree = pick(
        out / "eval" / "demo_cells" / "hierarchy.csv",
        "linear",
        "all",
        ("level1_balanced_accuracy", "level2_balanced_accuracy", "mistake_distance",
         "mistakes_across_root", "sensitivity_at_90_specificity", "sensitivity_at_95_specificity",
         "specificity_at_90_threshold", "specificity_at_95_threshold"),
    )  # fmt: skip
    calibration = {
        task: pick(
            out / "eval" / task / "calibration.csv",
            protocol,
            "all",
            ("ece", "ece_scaled", "nll", "nll_scaled", "coverage", "set_size", "temperature"),
        )
        for task, protocol in (("demo_cells", "linear"), ("demo_abnormal", "abmil"))
    }
    batch = {}
    for path in sorted((out / "eval" / "demo_cells").glob("*/robustness.json")):
        r = json.loads(path.read_text())
        batch[r["backbone"]] = {
            "class_probe": [r["class_probe"]["balanced_accuracy"], *r["class_probe"]["ci95"]],
            "stain_probe": [r["batch_probe"]["balanced_accuracy"], *r["batch_probe"]["ci95"]],
            "chance": r["batch_probe"]["chance"],
            "robustness_index": [r["robustness"]["robustness_index"], *r["robustness"]["ci95"]],
        }
    held_out = {}
    for path in sorted((out / "eval" / "demo_stain_out").glob("*/linear.json")):
        res = json.loads(path.read_text())
        block = res["results"][0]
        s = block["summary"]["balanced_accuracy"]
        held_out[res["backbone"]] = {
            "pooled": [s["mean"], *s["ci95"]],
            "per_lab": {
                h["value"]: sum(h["balanced_accuracy"]) / len(h["balanced_accuracy"])
                for h in block["held_out"]
            },
        }
    return {"tree": tree, "calibration": calibration, "batch": batch, "held_out": held_out}


def _ci(v) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def clinical_lines(c: dict) -> list[str]:
    lines = [
        "",
        "Clinical criteria (crop task, linear probe on all labels; demo_abnormal: attention MIL):",
        "",
        "| backbone | negative vs abnormal BA | 3-level BA | mistake distance | mistakes across "
        "root | sensitivity, threshold for 90% spec. on val | test spec. there | sensitivity, "
        "95% | test spec. there |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = (
        "level1_balanced_accuracy",
        "level2_balanced_accuracy",
        "mistake_distance",
        "mistakes_across_root",
        "sensitivity_at_90_specificity",
        "specificity_at_90_threshold",
        "sensitivity_at_95_specificity",
        "specificity_at_95_threshold",
    )
    for b, t in sorted(c["tree"].items()):
        lines.append(f"| {b} | " + " | ".join(_ci(t[k]) if k in t else "-" for k in keys) + " |")
    lines += [
        "",
        "| task | backbone | ECE raw | ECE scaled | NLL raw | NLL scaled | temperature | "
        "conformal coverage (90%) | set size |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, per in c["calibration"].items():
        for b, m in sorted(per.items()):
            cells = [
                _ci(m[k]) if k in m else "-" for k in ("ece", "ece_scaled", "nll", "nll_scaled")
            ]
            temp = f"{m['temperature'][0]:.2f}" if "temperature" in m else "-"
            conf = [_ci(m[k]) if k in m else "-" for k in ("coverage", "set_size")]
            lines.append(f"| {task} | {b} | " + " | ".join([*cells, temp, *conf]) + " |")
    lines += [
        "",
        "| backbone | class probe BA | stain (lab) probe BA | chance | robustness index | "
        "leave-one-stain-out BA (pooled) | per held-out lab |",
        "|---|---|---|---|---|---|---|",
    ]
    for b, r in sorted(c["batch"].items()):
        h = c["held_out"].get(b, {})
        per = ", ".join(f"{k} {v:.3f}" for k, v in h.get("per_lab", {}).items())
        pooled = _ci(h["pooled"]) if h else "-"
        lines.append(
            f"| {b} | {_ci(r['class_probe'])} | {_ci(r['stain_probe'])} | {r['chance']:.3f} | "
            f"{_ci(r['robustness_index'])} | {pooled} | {per} |"
        )
    return lines


def time_breakdown(out: Path) -> list[dict]:
    """Per stage, from the run's MLflow store: jobs and the seconds between each job's run start
    and end (what the job did once its imports were done; pretraining uses several threads)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = client.get_experiment_by_name("cytofm")
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    # the demo's own invocation: the one with the most job runs (a sizing run adds fewer)
    counts: dict[str, int] = {}
    for r in runs:
        if "cytofm.stage" in r.data.tags:
            key = r.data.tags.get("cytofm.invocation_id", "")
            counts[key] = counts.get(key, 0) + 1
    latest = max(counts, key=counts.get)
    stages: dict[str, list[float]] = {}
    for r in runs:  # the jobs' runs, not the invocation's parent run
        if "cytofm.stage" not in r.data.tags:
            continue
        if r.data.tags.get("cytofm.invocation_id") == latest and r.info.end_time:
            seconds = (r.info.end_time - r.info.start_time) / 1000
            stages.setdefault(r.data.tags["cytofm.stage"], []).append(seconds)
    rows = [
        {"stage": k, "jobs": len(v), "in_run_s": sum(v), "mean_s": sum(v) / len(v)}
        for k, v in stages.items()
    ]
    return sorted(rows, key=lambda r: -r["in_run_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "demo")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="do not run: write the figures again from --out and the time of the last run "
        "(benchmarks/results/demo.json)",
    )
    ap.add_argument(
        "--sizing-seeds",
        type=int,
        nargs="*",
        default=[1, 2],
        help="after the run, add the checkpoints of these pretraining seeds to its results and "
        "report each checkpoint's headline half-widths ([] = none)",
    )
    ap.add_argument(
        "--keep-sizing",
        action="store_true",
        help="carry the last run's sizing table over (marked so) instead of measuring it again: "
        "for a change that leaves every checkpoint's results as they were",
    )
    ap.add_argument("--timeout", type=int, default=3 * 3600, help="seconds per snakemake call")
    args = ap.parse_args()
    out = args.out
    if args.report_only:
        last = json.loads((RESULTS / "demo.json").read_text())
        seconds, jobs, cmd = last["seconds"], last["jobs"], last["command"]
    else:
        seconds, jobs, cmd = run(out, args.timeout)
    timing = time_breakdown(out)
    heads = [
        headline(out, "demo_cells", "crop task, linear probe on all labels"),
        headline(out, "demo_abnormal", "slide task, attention MIL"),
    ]
    det = json.loads((out / "qc" / "detection.json").read_text())["pooled"]
    probe = json.loads(next((out / "pretrain").glob("*/probe.json")).read_text())
    for task in TARGETS:
        for name in ("summary.csv", "comparisons.csv"):
            shutil.copyfile(out / "eval" / task / name, RESULTS / f"demo_{task}_{name}")
    for name in ("tables/demo_cells.md", "tables/demo_abnormal.md", "tables/overview.md"):
        src = out / "report" / name
        if src.is_file():
            shutil.copyfile(src, RESULTS / f"demo_report_{Path(name).name}")
    if args.report_only:
        size = last.get("sizing")
    elif args.keep_sizing:
        size = json.loads((RESULTS / "demo.json").read_text()).get("sizing")
        if size:
            size = {**size, "carried_over": True, "seed0_matches": _seed0_matches(size, heads)}
    else:
        size = sizing(out, args.sizing_seeds, args.timeout) if args.sizing_seeds else None
    record = {
        "machine": {"platform": platform.platform(), "cpu_threads": os.cpu_count()},
        "command": cmd,
        "seconds": seconds,
        "jobs": jobs,
        "headlines": heads,
        "detection": det,
        "probe": {k: probe[k] for k in ("ssl_mean", "random_mean", "margin", "n_images")},
        "clinical": clinical(out),
        "time_by_stage": timing,
        "sizing": size,
    }
    (RESULTS / "demo.json").write_text(json.dumps(record, indent=2, default=float))
    lines = [
        "# The default demo (config.yaml), end to end",
        "",
        f"`python benchmarks/demo_run.py` ran `{_relative(cmd)}`: {jobs} jobs in "
        f"{seconds / 60:.1f} min on {os.cpu_count()} CPU threads.",
        "",
        "| headline | metric | backbone | mean ± std [95% CI] | CI half-width | target |",
        "|---|---|---|---|---|---|",
    ]
    for h in heads:
        target = h["target_half_width"]
        for name, b in sorted(h["backbones"].items()):
            met = "met" if b["half_width"] <= target else "not met"
            lines.append(
                f"| {h['setting']} | {h['metric']} | {name} | {b['mean']:.3f} ± {b['std']:.3f} "
                f"[{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}] | {b['half_width']:.3f} | "
                f"<= {target} ({met}) |"
            )
    lines += ["", "Paired differences (same test items and seeds):", ""]
    for h in heads:
        for d in h["differences"]:
            lo, hi = d["ci95"]
            lines.append(
                f"- {h['setting']}: {d['pair']} = {d['difference']:+.3f} "
                f"[{lo:+.3f}, {hi:+.3f}], p = {d['p_value']:.3g}, Holm p = {d['p_holm']:.3g} "
                f"over {d['family_size']} comparisons: {d['verdict']}"
            )
    lines += [
        "",
        f"Cell detection (pooled over the demo slides): recall {det['recall']:.3f}, precision "
        f"{det['precision']:.3f}.",
        f"Pretraining probe (demo crops): pretrained {probe['ssl_mean']:.3f}, random "
        f"{probe['random_mean']:.3f} (margin {probe['margin']:+.3f}).",
        *clinical_lines(record["clinical"]),
        "",
        "Where the time goes: per stage, the jobs and the seconds inside their MLflow runs (from "
        "the run's start, after the job's imports, to its end; read from the run's store).",
        "",
        "| stage | jobs | seconds in runs | mean per job |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['stage']} | {r['jobs']} | {r['in_run_s']:.0f} | {r['mean_s']:.1f} |" for r in timing
    ]
    cores = os.cpu_count() or 1
    # pretraining's job takes every core (threads 8, capped at the cores); the others take one
    inside = sum(r["in_run_s"] * (cores if r["stage"] == "pretrain" else 1) for r in timing)
    lines += [
        "",
        f"Inside runs: {inside:.0f} core-seconds (pretraining counted on all {cores} cores). "
        f"The run had {cores} cores x {seconds:.0f} s = {cores * seconds:.0f} core-seconds; the "
        f"other {cores * seconds - inside:.0f} went to "
        "starting each job (the interpreter and its imports: torch in the embedding, "
        "evaluation and MIL jobs, timm and peft in the evaluation jobs), Snakemake's own work "
        "between jobs, sending the runs to MLflow, and cores left idle when fewer jobs than "
        "cores could run.",
        "",
    ]
    if size:
        lines += [*sizing_lines(size), ""]
    (RESULTS / "demo.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
