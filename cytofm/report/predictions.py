"""The report's section on predicted slides: each slide task's final models applied to the
slides of the sheet without a label for it (``results/predict/<task>/predictions.csv``)."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

__all__ = ["INTRO", "predictions_html"]

INTRO = (
    "Slides of the sample sheet without a label for the slide task, scored by each "
    "backbone's final model (trained on every labelled slide for the epochs the "
    "cross-validation chose; its cross-validated AUROC is in the task's section). "
    "P: the model's probability of each class. Cells: the share of the slide's cells the "
    "cell task's final head assigns to each class; attention: the share of the model's "
    "attention on cells of that class."
)


def _groups(table: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in table.columns if c.startswith(prefix)]


def predictions_html(table: pd.DataFrame, heatmaps: dict[tuple[str, str], str]) -> str:
    """One row per slide and backbone; the predicted class links to its heatmap."""
    probs, cells, attn = (_groups(table, p) for p in ("p_", "cells_", "attention_"))
    head = "<th>slide</th><th>backbone</th><th>predicted</th><th>cells</th>"
    head += "".join(f"<th>P({html.escape(c[2:])})</th>" for c in probs)
    head += "".join(f"<th>cells: {html.escape(c[6:])}</th>" for c in cells)
    head += "".join(f"<th>attention: {html.escape(c[10:])}</th>" for c in attn)
    rows = []
    for r in table.to_dict("records"):
        link = heatmaps.get((str(r["slide_id"]), str(r["backbone"])))
        predicted = html.escape(str(r["predicted"]) if pd.notna(r["predicted"]) else "no cells")
        if link:
            predicted = f'<a href="{html.escape(link)}">{predicted}</a>'
        cols = "".join(f"<td>{r[c]:.3f}</td>" if pd.notna(r[c]) else "<td>-</td>"
                       for c in (*probs, *cells, *attn))  # fmt: skip
        rows.append(
            f"<tr><th>{html.escape(str(r['slide_id']))}</th><td>{html.escape(str(r['backbone']))}"
            f"</td><td>{predicted}</td><td>{r['n_cells']}</td>{cols}</tr>"
        )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def heatmap_of(csv: Path, slide: str, backbone: str) -> Path:
    """The predict job's heatmap beside the task's table."""
    return Path(csv).parent / backbone / f"{slide}.png"
