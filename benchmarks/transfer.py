"""Transfer between real collections, measured inductively: pretrain on one collection,
evaluate on another that pretraining never read, against two controls: random weights of the
same architecture and hand-made nucleus and cell measurements (morphometry).

    python benchmarks/transfer.py                      # both directions
    python benchmarks/transfer.py --only cric_to_pbc
    python benchmarks/transfer.py --skip-lora          # without LoRA (most of the CPU time)

Runs ``snakemake`` with ``configs/transfer_<direction>.yaml`` exactly as a user would (plus a
results folder under benchmarks/out/; ``--skip-lora`` adds an overlay that leaves LoRA out of
the target task's protocols), then reads the evaluation's summary and paired comparisons. The
configs pretrain three times (``pretrain.seeds: [0, 1, 2]``): every row pools three
checkpoints unless it says otherwise (LoRA runs on the first, ``evaluate.lora.checkpoints:
first``). Writes:

- ``benchmarks/results/transfer.{md,json}``: per direction and protocol, the pretrained backbone
  and the controls (mean ± std [95% CI over checkpoints, test items and seeds]) and the paired
  differences (CI, p-value, Holm-adjusted p-value over the task's comparisons, verdict);
- ``benchmarks/results/lora_vs_linear_pbc.{md,json}`` (CRIC -> PBC run with LoRA): LoRA at the
  protocol's full budget next to the few-shot linear head at the same shots, per backbone, on
  the first checkpoint, with the budget each LoRA block ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DIRECTIONS = {"cric_to_pbc": ("cric", "pbc"), "pbc_to_cric": ("pbc", "cric")}


def skip_lora_overlay(name: str, folder: Path) -> Path:
    """An overlay that leaves LoRA out of the target task's protocols."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / f"transfer_{name}.yaml").read_text())
    target = DIRECTIONS[name][1]
    protocols = [p for p in config["evaluate"]["tasks"][target]["protocols"] if p != "lora"]
    path = folder / f"{name}.skip_lora.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    overlay = {"evaluate": {"tasks": {target: {"protocols": protocols}}}}
    path.write_text(yaml.safe_dump(overlay))
    return path


def run_direction(name: str, out: Path, timeout: int, skip_lora: bool = False) -> dict:
    """Run one direction's workflow; its wall time, and whether it resumed an interrupted run
    (then the time covers the rest only)."""
    resumed = (out / "pretrain").is_dir()
    seconds = _snakemake(name, out, timeout, skip_lora)
    return {"seconds": seconds, "resumed": resumed}


def _snakemake(name: str, out: Path, timeout: int, skip_lora: bool) -> float:
    exe = Path(sys.executable).with_name("snakemake")
    configs = [f"configs/transfer_{name}.yaml"]
    if skip_lora:
        configs.append(str(skip_lora_overlay(name, out.parent)))
    cmd = [str(exe), "--cores", "2", "--configfile", *configs, "--config", f"results={out}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": "none"}
    t0 = time.perf_counter()
    log = out.parent / f"{name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        proc = subprocess.run(
            cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout
        )
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}")
    return time.perf_counter() - t0


def _fmt(row, b, metric="balanced_accuracy") -> str:
    m, s = row[f"{metric}_mean"], row[f"{metric}_std"]
    lo, hi = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    return f"{m:.3f} ± {s:.3f} [{lo:.3f}, {hi:.3f}]"


def _setting(protocol, shots) -> str:
    return {"linear": "linear probe, all labels", "knn": "kNN, all labels"}.get(
        protocol, f"{'few-shot linear' if protocol == 'fewshot' else 'LoRA'}, {shots} per class"
    )


CONTROLS = ("random", "morphometry")


def _difference(comp: pd.DataFrame, protocol: str, block: str, versus: str) -> dict | None:
    c = comp[(comp.protocol == protocol) & (comp.block == block) & (comp.versus == versus)]
    if c.empty:
        return None
    d = c.iloc[0]
    return {
        "difference": float(d.difference),
        "ci": [float(d.ci_low), float(d.ci_high)],
        "p_value": float(d.p_value),
        "p_holm": float(d.p_holm),
        "family_size": int(d.family_size),
        "n_checkpoints": int(d.n_checkpoints),
        "verdict": d.verdict,
    }


def direction_rows(name: str, out: Path) -> list[dict]:
    source, target = DIRECTIONS[name]
    summary = pd.read_csv(out / "eval" / target / "summary.csv", keep_default_na=False)
    comp = pd.read_csv(out / "eval" / target / "comparisons.csv")
    comp = comp[(comp.metric == "balanced_accuracy") & (comp.backbone == "cytofm")]
    summary = summary[(summary.skipped == "") & (summary.fraction == "")]
    rows = []
    for (protocol, shots), part in summary.groupby(["protocol", "shots"], sort=False):
        by = {r.backbone: r for r in part.itertuples()}
        if {"cytofm", "random"} - set(by):
            continue
        block = "all" if shots == "all" else f"shots={int(shots)}"
        row = {
            "direction": f"{source} -> {target}",
            "protocol": protocol,
            "shots": shots,
            "setting": _setting(protocol, shots),
            "checkpoints": int(by["cytofm"].n_checkpoints),
            "budget": by["cytofm"].budget or "protocol",
            "n_test": int(by["cytofm"].n_test),
        }
        for b in ("cytofm", *CONTROLS):
            if b in by:
                row[b] = _fmt(part[part.backbone == b].iloc[0], b)
                row[f"{b}_mean"] = float(by[b].balanced_accuracy_mean)
        for control in CONTROLS:
            row[f"minus_{control}"] = _difference(comp, protocol, block, control)
        rows.append(row)
    order = {"linear": 0, "knn": 1, "fewshot": 2, "lora": 3}
    rows.sort(
        key=lambda r: (order.get(r["protocol"], 9), 0 if r["shots"] == "all" else int(r["shots"]))
    )
    return rows


SPLIT_CAVEAT = (
    "Caveat: PBC and CRIC give no patient per cell, so their splits are by cell, not by "
    "patient: cells of one patient can be in both the training and the test rows, and the "
    "intervals resample cells. Scores on new patients may be lower than these.\n"
)


def _diff_text(d: dict | None) -> tuple[str, str]:
    if d is None:
        return "-", "-"
    lo, hi = d["ci"]
    text = (
        f"{d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}], p = {d['p_value']:.3g}, "
        f"Holm p = {d['p_holm']:.3g}"
    )
    return text, d["verdict"]


def _md_table(rows: list[dict]) -> str:
    lines = [
        "| direction | setting | checkpoints | pretrained (cytofm) | random weights "
        "| morphometry | cytofm minus random | verdict | cytofm minus morphometry | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rnd, rnd_v = _diff_text(r["minus_random"])
        mor, mor_v = _diff_text(r["minus_morphometry"])
        lines.append(
            f"| {r['direction']} | {r['setting']} | {r['checkpoints']} | {r['cytofm']} | "
            f"{r['random']} | {r.get('morphometry', '-')} | {rnd} | {rnd_v} | {mor} | {mor_v} |"
        )
    return "\n".join(lines) + "\n"


def _lora_minus_linear(out: Path, backbone: str, shots: int) -> dict:
    """Paired difference of LoRA and the few-shot linear head: same test rows, and seed i of
    both trained on the same k rows per class."""
    from cytofm.eval.metrics import paired_difference
    from cytofm.eval.predictions import load_predictions

    folder = out / "eval" / "pbc" / backbone
    lora = load_predictions(folder / "lora.predictions.npz")
    linear = load_predictions(folder / "fewshot.predictions.npz")
    key = f"shots={shots}"
    d = paired_difference(lora["y_test"], lora["blocks"][key], linear["blocks"][key], n_boot=1000)[
        "balanced_accuracy"
    ]
    return {k: d[k] for k in ("difference", "ci95", "p_value", "excludes_zero")}


def lora_vs_linear(out: Path) -> tuple[str, list[dict]]:
    """On the first checkpoint (LoRA's, with ``evaluate.lora.checkpoints: first``): its own
    LoRA and few-shot results, not the task summary that pools checkpoints."""
    from cytofm.eval.summary import summary_table

    folders = [out / "eval" / "pbc" / b for b in ("cytofm", "random")]
    summary = summary_table([f / name for f in folders for name in ("lora.json", "fewshot.json")])
    summary = summary[(summary.skipped == "") & summary.fraction.isna()]
    lora = summary[summary.protocol == "lora"]
    rows = []
    for r in lora.itertuples():
        lin = summary[
            (summary.protocol == "fewshot")
            & (summary.backbone == r.backbone)
            & (summary.shots.astype(str) == str(r.shots))
        ]
        if lin.empty:
            continue
        diff = _lora_minus_linear(out, r.backbone, int(r.shots))
        rows.append(
            {
                "backbone": r.backbone,
                "shots": int(r.shots),
                "lora_minus_linear": diff,
                "lora": _fmt(
                    lora[(lora.backbone == r.backbone) & (lora.shots == r.shots)].iloc[0],
                    r.backbone,
                ),
                "linear": _fmt(lin.iloc[0], r.backbone),
                "lora_mean": float(r.balanced_accuracy_mean),
                "linear_mean": float(lin.iloc[0].balanced_accuracy_mean),
                "budget": r.budget or "protocol (50 + 100 x shots steps, 5 learning rates)",
            }
        )
    rows.sort(key=lambda x: (x["backbone"], x["shots"]))
    lines = [
        "| backbone | shots per class | LoRA (q, v; rank 2) | few-shot linear head "
        "| LoRA minus linear [95% CI], p | LoRA budget |",
        "|---|---|---|---|---|---|",
    ]
    for x in rows:
        d = x["lora_minus_linear"]
        lo, hi = d["ci95"]
        diff = f"{d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}], p = {d['p_value']:.3g}"
        lines.append(
            f"| {x['backbone']} | {x['shots']} | {x['lora']} | {x['linear']} | {diff} "
            f"| {x['budget']} |"
        )
    return "\n".join(lines) + "\n", rows


def _keep_other_directions(prev: dict, names, rows, seconds, resumed, commands):
    """Merge the directions this run did not make from the last transfer.json, when that file
    has them in this layout (pooled checkpoints, both controls)."""
    done = {f"{DIRECTIONS[n][0]} -> {DIRECTIONS[n][1]}" for n in names}
    kept = [r for r in prev.get("rows", []) if r["direction"] not in done and "checkpoints" in r]
    others = {r["direction"] for r in kept}
    for name, (source, target) in DIRECTIONS.items():
        if f"{source} -> {target}" in others:
            seconds = {name: prev["seconds"][name], **seconds}
            commands = {name: prev.get("commands", {}).get(name, prev["command"]), **commands}
            if name in prev.get("resumed", []):
                resumed = [name, *resumed]
    return kept + rows, seconds, resumed, commands


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(DIRECTIONS), action="append")
    ap.add_argument("--timeout", type=int, default=4 * 3600)
    ap.add_argument(
        "--tables-only",
        action="store_true",
        help="rebuild the tables from the finished runs in benchmarks/out/ (wall times are "
        "kept from the last transfer.json)",
    )
    ap.add_argument(
        "--skip-lora",
        action="store_true",
        help="leave LoRA out (it takes most of the CPU time; lora_vs_linear_pbc is then kept)",
    )
    args = ap.parse_args()
    names = args.only or list(DIRECTIONS)
    rows, seconds, resumed = [], {}, []
    previous = RESULTS / "transfer.json"
    for name in names:
        out = REPO / "benchmarks" / "out" / f"transfer_{name}"
        if args.tables_only:
            seconds[name] = json.loads(previous.read_text())["seconds"][name]
        else:
            run = run_direction(name, out, args.timeout, args.skip_lora)
            seconds[name] = run["seconds"]
            if run["resumed"]:
                resumed.append(name)
        rows += direction_rows(name, out)
    machine = {"platform": platform.platform(), "cpu_threads": os.cpu_count()}
    cmd = "python benchmarks/transfer.py" + "".join(f" --only {n}" for n in args.only or [])
    cmd += " --skip-lora" * args.skip_lora
    commands = dict.fromkeys(names, cmd)
    if args.only and previous.is_file():  # the other direction's rows of an earlier --only run
        rows, seconds, resumed, commands = _keep_other_directions(
            json.loads(previous.read_text()), names, rows, seconds, resumed, commands
        )
    cmd = "; ".join(dict.fromkeys(commands.values()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "transfer.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "command": cmd,
                "commands": commands,
                "seconds": seconds,
                "resumed": resumed,
                "rows": rows,
            },
            indent=2,
        )
    )
    md = [
        "# Transfer between real collections (inductive)",
        "",
        f"`{cmd}` on {machine['cpu_threads']} CPU threads; wall time per direction (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        + "".join(
            f" ({k} resumed an interrupted run: its time covers the rest only)" for k in resumed
        ),
        "",
        "Balanced accuracy on the target collection's test split; mean ± std over the runs "
        "[95% CI over pretraining checkpoints, test items and evaluation seeds]; `checkpoints`: "
        "the pretraining runs (seeds) the row pools, each paired with its own random "
        "initialisation; morphometry has no checkpoint and is paired with each. Differences: "
        "pretrained minus control on the same test items and seeds, its 95% CI and p-value, and "
        "the p-value Holm-adjusted over all of the task's comparisons (the verdict rests on "
        "it). Pretraining never read the target collection.",
        "",
        _md_table(rows),
        SPLIT_CAVEAT,
    ]
    if args.skip_lora:
        md.insert(
            -2,
            "LoRA was left out of this run (`--skip-lora`) to fit the CPU time at hand. "
            "`lora_vs_linear_pbc.md` keeps the last run with LoRA (one checkpoint, before the "
            "morphometry control and Holm's adjustment).\n",
        )
    (RESULTS / "transfer.md").write_text("\n".join(md))
    if "cric_to_pbc" in names and not args.skip_lora:
        table, lrows = lora_vs_linear(REPO / "benchmarks" / "out" / "transfer_cric_to_pbc")
        (RESULTS / "lora_vs_linear_pbc.json").write_text(
            json.dumps({"machine": machine, "command": cmd, "rows": lrows}, indent=2)
        )
        (RESULTS / "lora_vs_linear_pbc.md").write_text(
            "# LoRA vs. the linear head on PBC (backbones pretrained on CRIC, or random)\n\n"
            f"`{cmd}`, CPU. Balanced accuracy, mean ± std over 3 seeds [95% CI over test items "
            "and seeds]. LoRA follows the protocol: rank-2 adapters on q and v of every block, "
            "50 + 100 x shots steps with warm-up and cosine, learning rate chosen on validation "
            "from 5 values; shots are limited to 1, 2 and 4 on CPU (each is at its full "
            "budget).\n\n" + table
        )
    print((RESULTS / "transfer.md").read_text())


if __name__ == "__main__":
    main()
