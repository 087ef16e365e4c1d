"""Per-task summary of the result JSONs: one table row per backbone x protocol x shots, and
the few-shot curves (balanced accuracy vs. shots per class, with 95% CI bands)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cytofm.eval.metrics import SCALARS
from cytofm.results import read_result

__all__ = ["plot_fewshot", "plot_mil", "summary_table"]

COLUMNS = ["task", "backbone", "protocol", "shots", "fraction"]


def summary_table(result_jsons: list[str | Path]) -> pd.DataFrame:
    """Rows of mean, std and CI of every scalar metric, as written in the JSONs."""
    rows = []
    for path in result_jsons:
        res = read_result(path)
        for block in res["results"]:
            row = {
                "task": res["task"],
                "backbone": res["backbone"],
                "protocol": res["protocol"],
                "shots": block["shots"] if block["shots"] is not None else "all",
                "fraction": block.get("fraction"),
                "n_seeds": len(block["runs"]),
                "n_test": res["split"]["n_test"],
                "budget": _budget_text(block.get("budget")),
            }
            for metric in SCALARS:
                s = block["summary"][metric]
                row[f"{metric}_mean"] = s["mean"]
                row[f"{metric}_std"] = s["std"]
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = s["ci95"]
            truth = res.get("attention_vs_truth")
            if truth:  # slide-level MIL scored against true cell classes
                for metric in ("auroc", "top_k_positive_rate"):
                    s = truth[metric]
                    row[f"attention_{metric}_mean"] = s["mean"]
                    row[f"attention_{metric}_std"] = s["std"]
                    row[f"attention_{metric}_ci_low"] = s["ci95"][0]
                    row[f"attention_{metric}_ci_high"] = s["ci95"][1]
                row["attention_base_rate"] = truth["base_rate"]
            rows.append(row)
        for skip in res.get("skipped", []):
            rows.append(
                {
                    "task": res["task"],
                    "backbone": res["backbone"],
                    "protocol": res["protocol"],
                    "shots": skip["shots"],
                    "skipped": skip["reason"],
                }
            )
    table = pd.DataFrame(rows)
    if "fraction" not in table:
        table["fraction"] = None
    table["fraction"] = pd.to_numeric(table["fraction"])
    for column in ("skipped", "budget"):
        if column not in table:
            table[column] = ""
        table[column] = table[column].fillna("")
    return table


def _budget_text(budget: dict | None) -> str:
    """'' at the protocol's budget, else 'S of P steps' (a config capped the steps)."""
    if not budget or not budget.get("reduced"):
        return ""
    return f"{budget['steps']} of {budget['protocol_steps']} steps"


def plot_fewshot(table: pd.DataFrame, out_png: str | Path, metric: str = "balanced_accuracy"):
    """Balanced accuracy vs. shots for each backbone x few-shot protocol, CI bands shaded;
    full-data linear probes as dashed horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ok = table[(table["skipped"] == "") & table["fraction"].isna()]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    backbones = sorted(ok["backbone"].unique())
    styles = {"fewshot": "-o", "lora": "--s"}
    for i, bb in enumerate(backbones):
        colour = colours[i % len(colours)]
        for protocol, style in styles.items():
            part = ok[(ok["backbone"] == bb) & (ok["protocol"] == protocol)]
            if part.empty:
                continue
            part = part.assign(k=part["shots"].astype(int)).sort_values("k")
            label = f"{bb} {'linear' if protocol == 'fewshot' else 'LoRA'}"
            ax.plot(part["k"], part[f"{metric}_mean"], style, color=colour, label=label, ms=4)
            ax.fill_between(
                part["k"],
                part[f"{metric}_ci_low"],
                part[f"{metric}_ci_high"],
                color=colour,
                alpha=0.15,
                lw=0,
            )
        full = ok[(ok["backbone"] == bb) & (ok["protocol"] == "linear")]
        if not full.empty:
            ax.axhline(
                full[f"{metric}_mean"].iloc[0],
                color=colour,
                ls=":",
                lw=1,
                label=f"{bb} linear, all labels",
            )
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for k in ok["shots"] if str(k) != "all"})
    if ticks:
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel("labelled examples per class (shots)")
    ax.set_ylabel(metric.replace("_", " ") + " (test)")
    task = ", ".join(sorted(table["task"].unique()))
    ax.set_title(f"{task}: few-shot curves (mean over seeds, 95% bootstrap CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def plot_mil(table: pd.DataFrame, out_png: str | Path) -> None:
    """Slide-level AUROC per backbone and, where true cell classes are known, the AUROC of
    attention for the abnormal cells (mean over seeds, 95% bootstrap CI as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ok = table[table["skipped"] == ""].sort_values("backbone")
    panels = [("auroc", "slide label: AUROC (out-of-fold)")]
    if "attention_auroc_mean" in ok and ok["attention_auroc_mean"].notna().any():
        panels.append(("attention_auroc", "attention vs. true abnormal cells: AUROC"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 0.6, 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    x = np.arange(len(ok))
    for ax, (metric, title) in zip(axes[0], panels, strict=True):
        mean = ok[f"{metric}_mean"].to_numpy(float)
        err = np.abs(
            np.stack(
                [
                    mean - ok[f"{metric}_ci_low"].to_numpy(float),
                    ok[f"{metric}_ci_high"].to_numpy(float) - mean,
                ]
            )
        )
        ax.bar(x, mean, color=[colours[i % len(colours)] for i in range(len(ok))], width=0.6)
        ax.errorbar(x, mean, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=4)
        for xi, m in zip(x, mean, strict=True):
            ax.text(xi, 0.02, f"{m:.2f}", ha="center", va="bottom", fontsize=8, color="white")
        ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
        ax.set_xticks(x, ok["backbone"].tolist(), rotation=20)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("AUROC")
        ax.set_title(title, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    task = ", ".join(sorted(table["task"].unique()))
    fig.suptitle(f"{task}: attention MIL, mean over seeds with 95% bootstrap CI", fontsize=9)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
