"""Pretrained features against both controls on real cells: random weights and morphometry.

Runs ``configs/real_data.yaml`` with the CI overlay ``.test/real_data_ci.yaml`` (the workflow
``tests/test_real_eval.py`` runs: PBC and CRIC imported, the 200-step pretraining recipe with
each task's test rows left out, every backbone embedded and evaluated), then tabulates the
full-label linear probe and kNN of every backbone and the paired differences with their raw and
Holm-adjusted p-values.

    python benchmarks/real_data_controls.py                   # runs the workflow (~10 min)
    python benchmarks/real_data_controls.py --from RESULTS    # tabulates a finished run

Writes ``benchmarks/results/real_data_controls.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORKFLOW = ["--configfile", "configs/real_data.yaml", ".test/real_data_ci.yaml"]
TASKS = ("pbc", "cric")


def run_workflow(out: Path) -> None:
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [str(exe), "--cores", str(os.cpu_count() or 1), *WORKFLOW, "--config", f"results={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=4 * 3600)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-4000:])


def tabulate(results: Path) -> dict:
    rows, pairs = [], []
    for task in TASKS:
        summary = pd.read_csv(results / "eval" / task / "summary.csv", keep_default_na=False)
        summary = summary[(summary.shots.astype(str) == "all") & (summary.fraction == "")]
        for r in summary.itertuples():
            rows.append(
                {
                    "task": task,
                    "backbone": r.backbone,
                    "protocol": r.protocol,
                    "mean": float(r.balanced_accuracy_mean),
                    "ci95": [float(r.balanced_accuracy_ci_low), float(r.balanced_accuracy_ci_high)],
                }
            )
        comp = pd.read_csv(results / "eval" / task / "comparisons.csv")
        comp = comp[(comp.metric == "balanced_accuracy") & (comp.block == "all")]
        for c in comp.itertuples():
            pairs.append(
                {
                    "task": task,
                    "protocol": c.protocol,
                    "pair": f"{c.backbone} - {c.versus}",
                    "difference": float(c.difference),
                    "ci95": [float(c.ci_low), float(c.ci_high)],
                    "p_value": float(c.p_value),
                    "p_holm": float(c.p_holm),
                    "family_size": int(c.family_size),
                    "verdict": c.verdict,
                }
            )
    return {"rows": rows, "pairs": pairs}


def markdown(record: dict) -> str:
    lines = [
        "# Pretrained features against random weights and morphometry (real cells)",
        "",
        f"`{record['command']}` ({record['machine']['cpus']} CPUs). "
        "The workflow of `snakemake " + " ".join(WORKFLOW) + "`: the 200-step pretraining "
        "recipe on PBC and CRIC with each task's test rows left out; balanced accuracy of the "
        "full-label linear probe and kNN on the test rows, mean [95% CI over test items].",
        "",
        "| task | protocol | backbone | balanced accuracy [95% CI] |",
        "|---|---|---|---|",
    ]
    for r in sorted(record["rows"], key=lambda r: (r["task"], r["protocol"], r["backbone"])):
        lo, hi = r["ci95"]
        lines.append(
            f"| {r['task']} | {r['protocol']} | {r['backbone']} | {r['mean']:.3f} "
            f"[{lo:.3f}, {hi:.3f}] |"
        )
    lines += [
        "",
        "| task | protocol | difference | [95% CI] | p | Holm p (family) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in sorted(record["pairs"], key=lambda p: (p["task"], p["protocol"], p["pair"])):
        lo, hi = p["ci95"]
        lines.append(
            f"| {p['task']} | {p['protocol']} | {p['pair']} = {p['difference']:+.3f} | "
            f"[{lo:+.3f}, {hi:+.3f}] | {p['p_value']:.3g} | {p['p_holm']:.3g} "
            f"({p['family_size']}) | {p['verdict']} |"
        )
    lines += [
        "",
        "PBC and CRIC give no patient per cell: their splits are by cell, so cells of one "
        "patient can sit in the training and the test rows. One pretraining checkpoint.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="source", type=Path, help="a finished run's results folder")
    args = ap.parse_args()
    command = "python benchmarks/real_data_controls.py"
    if args.source:
        record = tabulate(args.source)
        command += " --from <results of that workflow>"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run_workflow(Path(tmp) / "results")
            record = tabulate(Path(tmp) / "results")
    record["command"] = command
    record["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "real_data_controls.json").write_text(json.dumps(record, indent=2))
    (RESULTS / "real_data_controls.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
