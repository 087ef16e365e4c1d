"""Results tables: one row per protocol setting, one column per backbone (seed 001, Table 1).

Each cell holds the mean over seeds, the standard deviation and the bootstrap 95% CI of the
task's main metric, exactly as the result JSONs give them; the best mean of each row is marked.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

__all__ = ["main_metric", "overview_table", "results_table", "setting_label", "write_table"]


def main_metric(summary: pd.DataFrame) -> str:
    """Balanced accuracy for patch-level tasks, AUROC for slide-level (MIL) ones."""
    return "auroc" if (summary["protocol"] == "abmil").all() else "balanced_accuracy"


def setting_label(protocol: str, shots, fraction) -> tuple[tuple, str]:
    """(sort key, row label) of one protocol setting."""
    if fraction is not None and not pd.isna(fraction):
        name = "linear probe" if protocol == "linear" else "LoRA"
        return (5 if protocol == "linear" else 6, float(fraction)), (
            f"{name}, {100 * float(fraction):g}% of training labels"
        )
    if protocol == "linear":
        return (0, 0), "linear probe, all labels"
    if protocol == "knn":
        return (1, 0), "kNN, all labels"
    if protocol == "fewshot":
        return (2, int(shots)), f"few-shot linear, {int(shots)} per class"
    if protocol == "lora":
        return (3, int(shots)), f"LoRA, {int(shots)} per class"
    if protocol == "abmil":
        return (4, 0), "attention MIL (ABMIL), slide label"
    return (9, str(shots)), f"{protocol} {shots}"


def results_table(summary: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Long summary (one row per backbone x setting) -> wide table with per-backbone columns
    ``<backbone>_mean/_std/_ci_low/_ci_high`` and ``best`` (backbones with the top mean)."""
    metric = metric or main_metric(summary)
    ok = summary[summary["skipped"] == ""]
    backbones = sorted(ok["backbone"].unique())
    rows: dict[str, dict] = {}
    for _, r in ok.iterrows():
        fraction = r.get("fraction")
        shots = None if r["shots"] == "all" else r["shots"]
        key, label = setting_label(r["protocol"], shots, fraction)
        row = rows.setdefault(
            label,
            {
                "_key": key,
                "setting": label,
                "protocol": r["protocol"],
                "shots": r["shots"],
                "fraction": fraction,
                "metric": metric,
            },
        )
        for stat in ("mean", "std", "ci_low", "ci_high"):
            row[f"{r['backbone']}_{stat}"] = float(r[f"{metric}_{stat}"])
    table = pd.DataFrame(sorted(rows.values(), key=lambda r: r["_key"])).drop(columns="_key")
    means = table[[f"{b}_mean" for b in backbones]]
    top = means.max(axis=1)
    table["best"] = [
        ",".join(b for b in backbones if row[f"{b}_mean"] == best)
        for (_, row), best in zip(table.iterrows(), top, strict=True)
    ]
    table.attrs["backbones"] = backbones
    return table


def overview_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Tasks x backbones on the full-label linear probe (ABMIL for slide tasks), plus the
    average over tasks: the shape of seed 001's Table 1."""
    rows = []
    for task, table in tables.items():
        first = table[table["setting"].isin(["linear probe, all labels", *_mil_rows(table)])]
        if first.empty:
            continue
        row = first.iloc[0]
        entry = {"task": task, "setting": row["setting"], "metric": row["metric"]}
        for b in table.attrs["backbones"]:
            for stat in ("mean", "std", "ci_low", "ci_high"):
                entry[f"{b}_{stat}"] = row.get(f"{b}_{stat}")
        rows.append(entry)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    backbones = sorted({b for t in tables.values() for b in t.attrs["backbones"]})
    out.attrs["backbones"] = backbones
    patch = out[out["metric"] == "balanced_accuracy"]
    if len(patch) > 1:  # the average is over patch tasks only: one metric, comparable
        avg = {"task": "average (patch tasks)", "setting": "", "metric": "balanced_accuracy"}
        for b in backbones:
            avg[f"{b}_mean"] = patch[f"{b}_mean"].mean()
        out = pd.concat([out, pd.DataFrame([avg])], ignore_index=True)
        out.attrs["backbones"] = backbones
    means = out[[f"{b}_mean" for b in backbones]]
    out["best"] = [
        ",".join(b for b in backbones if row[f"{b}_mean"] == best)
        for (_, row), best in zip(out.iterrows(), means.max(axis=1), strict=True)
    ]
    return out


def _mil_rows(table: pd.DataFrame) -> list[str]:
    return [s for s in table["setting"] if s.startswith("attention MIL")]


def _cell(row: pd.Series, backbone: str) -> str:
    mean = row.get(f"{backbone}_mean")
    if mean is None or pd.isna(mean):
        return "-"
    std, lo, hi = (row.get(f"{backbone}_{s}") for s in ("std", "ci_low", "ci_high"))
    if std is None or pd.isna(std):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {std:.3f} [{lo:.3f}, {hi:.3f}]"


def to_markdown(table: pd.DataFrame, first: str = "setting") -> str:
    backbones = table.attrs["backbones"]
    lines = [
        f"| {first} | " + " | ".join(backbones) + " |",
        "|---|" + "---|" * len(backbones),
    ]
    for _, row in table.iterrows():
        best = set(str(row["best"]).split(","))
        cells = [f"**{_cell(row, b)}**" if b in best else _cell(row, b) for b in backbones]
        lines.append(f"| {row[first]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_html(table: pd.DataFrame, first: str = "setting") -> str:
    backbones = table.attrs["backbones"]
    head = "".join(f"<th>{html.escape(b)}</th>" for b in backbones)
    body = []
    for _, row in table.iterrows():
        best = set(str(row["best"]).split(","))
        cells = "".join(
            f'<td class="best">{_cell(row, b)}</td>' if b in best else f"<td>{_cell(row, b)}</td>"
            for b in backbones
        )
        body.append(f"<tr><th>{html.escape(str(row[first]))}</th>{cells}</tr>")
    return (
        f'<table class="results"><thead><tr><th>{first}</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def write_table(table: pd.DataFrame, stem: Path, first: str = "setting") -> dict[str, Path]:
    """``<stem>.csv`` (numbers), ``<stem>.md`` (mean ± std [CI], best in bold)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    table.to_csv(csv, index=False, float_format="%.4f")
    md.write_text(to_markdown(table, first))
    return {"csv": csv, "md": md}
