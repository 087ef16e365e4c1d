"""Results tables: one row per protocol setting, one column per backbone (as Table 1 of
Dausort, Godelaine et al.).

Each cell holds the mean over seeds, the standard deviation and the 95% CI (test items and
seeds) of the task's main metric, exactly as the task's summary gives them; a backbone on
several pretraining checkpoints pools them (its heading says how many, and the interval's top
level is the checkpoint), and every paired difference says over how many checkpoints it holds,
or that it holds for this checkpoint. A backbone is marked
best in a row only when the paired comparisons (:mod:`cytofm.eval.compare`) show it ahead of
every other backbone with a Holm-adjusted p-value below 0.05 (the task's comparisons are one
family); otherwise the row reads "no difference". LoRA cells run on a capped budget say so.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "checkpoint_counts",
    "header",
    "main_metric",
    "overview_table",
    "results_table",
    "sentence",
    "setting_label",
    "write_table",
]


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


def results_table(
    summary: pd.DataFrame, metric: str | None = None, comparisons: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Long summary (one row per backbone x setting) -> wide table with per-backbone columns
    ``<backbone>_mean/_std/_ci_low/_ci_high`` (and ``_budget`` for capped LoRA runs), ``best``
    (the backbone the comparisons show ahead of all others, else empty) and ``verdict`` (what
    the paired differences support, in words)."""
    from cytofm.eval.compare import verdicts
    from cytofm.eval.predictions import block_key

    metric = metric or main_metric(summary)
    ok = summary[summary["skipped"] == ""]
    backbones = sorted(ok["backbone"].unique())
    rows: dict[str, dict] = {}
    for _, r in ok.iterrows():
        fraction = r.get("fraction")
        fraction = None if fraction is None or pd.isna(fraction) else float(fraction)
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
                "block": block_key(shots, fraction),
                "metric": metric,
            },
        )
        for stat in ("mean", "std", "ci_low", "ci_high"):
            row[f"{r['backbone']}_{stat}"] = float(r[f"{metric}_{stat}"])
        budget = r.get("budget")
        if isinstance(budget, str) and budget:
            row[f"{r['backbone']}_budget"] = budget
    table = pd.DataFrame(sorted(rows.values(), key=lambda r: r["_key"])).drop(columns="_key")
    found = verdicts(comparisons, metric) if comparisons is not None else {}
    best, words = [], []
    for _, row in table.iterrows():
        v = found.get((row["protocol"], row["block"]))
        best.append(v["winner"] or "" if v else "")
        words.append(_verdict_words(v, metric) if v else "not compared")
    table["best"] = best
    table["verdict"] = words
    table.attrs["backbones"] = backbones
    table.attrs["checkpoints"] = checkpoint_counts(ok)
    return table


def checkpoint_counts(summary: pd.DataFrame) -> dict[str, int]:
    """backbone -> the pretraining checkpoints its summary rows pool (1 without the column)."""
    if "n_checkpoints" not in summary:
        return {b: 1 for b in summary["backbone"].unique()}
    counts = summary.groupby("backbone")["n_checkpoints"].max()
    return {b: int(n) for b, n in counts.items()}


def header(table: pd.DataFrame, backbone: str) -> str:
    """A backbone's column heading: its name, and how many checkpoints it pools when several."""
    n = table.attrs.get("checkpoints", {}).get(backbone, 1)
    return f"{backbone} ({n} checkpoints)" if n > 1 else backbone


def _fmt_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _fmt_diff(r) -> str:
    """'+0.12 [+0.05, +0.19], p = 0.002, Holm p = 0.030 (of 24 tests), over 3 pretraining
    checkpoints' ('for this checkpoint' when one run of pretraining stands behind it)."""
    text = f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
    text += f", p {_fmt_p(r['p_value'])}"
    holm = r.get("p_holm")
    if holm is not None and np.isfinite(holm):
        text += f", Holm p {_fmt_p(holm)} (of {int(r['family_size'])} tests)"
    n = r.get("n_checkpoints")
    if n is not None and not pd.isna(n):
        text += f", over {int(n)} pretraining checkpoints" if n > 1 else ", for this checkpoint"
    return text


def _verdict_words(v: dict, metric: str) -> str:
    """'a ahead of b: +0.12 [...]' / 'no difference' for the row's paired comparisons."""
    pairs = v["pairs"]
    if pairs.empty:
        return "not compared"
    parts = []
    for _, r in pairs.iterrows():
        if r["verdict"] == "no difference":
            parts.append(f"{r['backbone']} vs {r['versus']}: no difference ({_fmt_diff(r)})")
        else:
            word = "ahead of" if r["verdict"] == "better" else "behind"
            parts.append(f"{r['backbone']} {word} {r['versus']}: {_fmt_diff(r)}")
    return "; ".join(parts)


def sentence(task: str, row: pd.Series, comparisons: pd.DataFrame | None) -> str:
    """One sentence per task: what the paired comparison of the headline row supports."""
    from cytofm.eval.compare import verdicts

    metric = row["metric"].replace("_", " ")
    v = verdicts(comparisons, row["metric"]).get((row["protocol"], row["block"]))
    if not v or v["pairs"].empty:
        return f"{task}: no paired comparison is available for the {row['setting']}."
    out = []
    for _, r in v["pairs"].iterrows():
        if r["verdict"] == "no difference":
            out.append(
                f"the {row['setting']} shows no difference in {metric} between {r['backbone']} "
                f"and {r['versus']} ({_fmt_diff(r)}); these numbers do not rank them"
            )
        else:
            word = "ahead of" if r["verdict"] == "better" else "behind"
            out.append(
                f"on the {row['setting']}, {r['backbone']} is {word} {r['versus']} in {metric} "
                f"by {_fmt_diff(r)}"
            )
    return f"{task}: " + "; ".join(out) + "."


def overview_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Tasks x backbones on the full-label linear probe (ABMIL for slide tasks), plus the
    average over tasks: the shape of Table 1 of Dausort, Godelaine et al.."""
    rows = []
    for task, table in tables.items():
        first = table[table["setting"].isin(["linear probe, all labels", *_mil_rows(table)])]
        if first.empty:
            continue
        row = first.iloc[0]
        entry = {
            "task": task,
            "setting": row["setting"],
            "metric": row["metric"],
            "protocol": row["protocol"],
            "block": row["block"],
            "best": row["best"],
            "verdict": row["verdict"],
        }
        for b in table.attrs["backbones"]:
            for stat in ("mean", "std", "ci_low", "ci_high"):
                entry[f"{b}_{stat}"] = row.get(f"{b}_{stat}")
        rows.append(entry)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    backbones = sorted({b for t in tables.values() for b in t.attrs["backbones"]})
    out.attrs["backbones"] = backbones
    counts: dict[str, int] = {}
    for t in tables.values():
        for b, n in t.attrs.get("checkpoints", {}).items():
            counts[b] = max(counts.get(b, 1), n)
    out.attrs["checkpoints"] = counts
    patch = out[out["metric"] == "balanced_accuracy"]
    if len(patch) > 1:  # the average is over patch tasks only: one metric, comparable
        avg = {
            "task": "average (patch tasks)",
            "setting": "",
            "metric": "balanced_accuracy",
            "best": "",
            "verdict": "an average over tasks is not tested",
        }
        for b in backbones:
            avg[f"{b}_mean"] = patch[f"{b}_mean"].mean()
        out = pd.concat([out, pd.DataFrame([avg])], ignore_index=True)
        out.attrs["backbones"] = backbones
        out.attrs["checkpoints"] = counts
    out["best"] = out["best"].fillna("")
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
    text = f"{mean:.3f} ± {std:.3f} [{lo:.3f}, {hi:.3f}]"
    budget = row.get(f"{backbone}_budget")
    if isinstance(budget, str) and budget:
        text += f" (reduced budget: {budget})"
    return text


def to_markdown(table: pd.DataFrame, first: str = "setting") -> str:
    backbones = table.attrs["backbones"]
    lines = [
        f"| {first} | "
        + " | ".join(header(table, b) for b in backbones)
        + " | paired difference |",
        "|---|" + "---|" * (len(backbones) + 1),
    ]
    for _, row in table.iterrows():
        best = set(str(row["best"]).split(","))
        cells = [f"**{_cell(row, b)}**" if b in best else _cell(row, b) for b in backbones]
        lines.append(f"| {row[first]} | " + " | ".join(cells) + f" | {row.get('verdict', '')} |")
    return "\n".join(lines) + "\n"


def to_html(table: pd.DataFrame, first: str = "setting") -> str:
    backbones = table.attrs["backbones"]
    head = "".join(f"<th>{html.escape(header(table, b))}</th>" for b in backbones)
    head += "<th>paired difference</th>"
    body = []
    for _, row in table.iterrows():
        best = set(str(row["best"]).split(","))
        cells = "".join(
            f'<td class="best">{_cell(row, b)}</td>' if b in best else f"<td>{_cell(row, b)}</td>"
            for b in backbones
        )
        cells += f'<td class="verdict">{html.escape(str(row.get("verdict", "")))}</td>'
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


def shown_block(keys) -> str | None:
    """The block of a protocol that a summary table or figure shows: all labels where the
    protocol has it, else the most shots (fractions are in the CSVs only)."""
    keys = list(keys)
    if "all" in keys:
        return "all"
    shots = [k for k in keys if k.startswith("shots=")]
    return max(shots, key=lambda k: int(k.split("=")[1]), default=None)


def long_view(long: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """A long metrics table (``LONG_COLUMNS``) as rows of backbone x shown setting
    (:func:`shown_block`) and columns ``label: 'mean [low, high]'`` for ``columns`` (metric ->
    label, in order)."""
    out = []
    for (protocol, backbone), rows in long.groupby(["protocol", "backbone"], sort=False):
        key = shown_block(dict.fromkeys(rows["block"]))
        if key is None:
            continue
        shots = int(key.split("=")[1]) if key.startswith("shots=") else None
        order, setting = setting_label(protocol, shots, None)
        row = {"_key": order, "setting": setting, "backbone": backbone}
        by_metric = rows[rows["block"] == key].set_index("metric")
        for metric, label in columns.items():
            if metric in by_metric.index:
                r = by_metric.loc[metric]
                row[label] = f"{r['mean']:.3f} [{r['ci95_low']:.3f}, {r['ci95_high']:.3f}]"
        out.append(row)
    if not out:
        return pd.DataFrame()
    table = pd.DataFrame(out).sort_values(["_key", "backbone"], kind="stable")
    return table.drop(columns="_key").fillna("-").reset_index(drop=True)


def plain_html(table: pd.DataFrame) -> str:
    """A table of strings, escaped."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in table.itertuples(index=False)
    )
    return f'<table class="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
