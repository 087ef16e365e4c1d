"""Per-task summary of the result JSONs: one table row per backbone x protocol x shots
(drawn by :func:`cytofm.report.figures.plot_fewshot` and ``plot_mil``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cytofm.eval.metrics import SCALARS
from cytofm.results import read_result

__all__ = ["summary_table"]

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
    """'' at the protocol's budget, else how it falls short ('S of P steps', a shorter
    learning-rate grid, another rank or other adapted layers)."""
    if not budget or not budget.get("reduced"):
        return ""
    return "; ".join(
        budget.get("departures") or [f"{budget['steps']} of {budget['protocol_steps']} steps"]
    )
