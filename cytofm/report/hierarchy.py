"""The report's label-tree table: per-level metrics, mistake severity and screening operating
points of a task with a ``hierarchy`` (see :mod:`cytofm.eval.hierarchy`)."""

from __future__ import annotations

import html

import pandas as pd

from cytofm.eval.hierarchy import SPECIFICITIES, LabelTree
from cytofm.report.tables import long_view, plain_html

__all__ = ["INTRO", "hierarchy_html", "hierarchy_view"]

INTRO = (
    "The task's classes as a tree. Per level, balanced accuracy of the coarse prediction (the "
    "node whose classes' probabilities sum highest); mistake distance: mean tree edges between "
    "the true and the predicted class over the wrong answers (2 = a sibling class); across "
    "root: share of the mistakes that are wrong at level 1; screening: the threshold that gives "
    "90% (95%) specificity on the validation rows, applied to the test rows: the sensitivity "
    "and the specificity reached there. Mean over seeds [95% CI over test "
    "items (whole groups) and seeds]. Shown: each protocol with all labels, few-shot and LoRA "
    "with the most labels; every setting is in the CSV."
)


def hierarchy_view(long: pd.DataFrame, tree: LabelTree) -> pd.DataFrame:
    """Rows: backbone x shown setting; columns: 'mean [low, high]' per metric."""
    columns = {}
    for d in range(1, tree.depth + 1):
        names = ", ".join(tree.level(d)[0])
        columns[f"level{d}_balanced_accuracy"] = f"L{d} BA ({names})"
        columns[f"level{d}_macro_f1"] = f"L{d} macro-F1"
    columns["mistake_distance"] = "mistake distance (edges)"
    columns["mistakes_across_root"] = "mistakes across root"
    for s in SPECIFICITIES:
        columns[f"sensitivity_at_{round(s * 100)}_specificity"] = (
            f"sensitivity @ {round(s * 100)}% spec. (val threshold)"
        )
        columns[f"specificity_at_{round(s * 100)}_threshold"] = (
            f"specificity reached @ {round(s * 100)}%"
        )
    return long_view(long, columns)


def hierarchy_html(table: pd.DataFrame, tree: LabelTree) -> str:
    lines = "<br>".join(html.escape(t).replace("  ", "&nbsp;&nbsp;") for t in tree.describe())
    screening = (
        f"<p>Screening node: <b>{html.escape(tree.screening)}</b>.</p>" if tree.screening else ""
    )
    return f'<p class="tree"><code>{lines}</code></p>{screening}{plain_html(table)}'
