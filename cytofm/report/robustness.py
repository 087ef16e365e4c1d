"""The report's robustness sections: the batch-leak probe and robustness index of each backbone
(tasks with a ``batch`` column), and the per-value results of leave-one-out tasks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["BATCH_INTRO", "HELD_OUT_INTRO", "batch_table", "held_out_table", "plot_batch"]

BATCH_INTRO = (
    "Do the features encode the laboratory more than the cell? Per backbone, the task's linear "
    "probe trained to predict the batch column instead of the class (balanced accuracy on the "
    "test rows; chance = 1 / number of values), next to the same probe predicting the class; "
    "and the robustness index (PathoROB): among each image's k nearest neighbours (its own "
    "slide or patient left out), neighbours of the same class from another batch value over "
    "those plus neighbours of another class from the same value (1: biology only; 0.5: batch "
    "as strong as class). [95% CI: bootstrap of test rows, or of all rows for the index, whole "
    "groups.]"
)
HELD_OUT_INTRO = (
    "Each value of the task's hold_out column was the test set once, the model trained on the "
    "others; the task's table above pools those predictions. Here each held-out value's own "
    "balanced accuracy (mean over seeds), and the lowest: how the models do on a laboratory, "
    "site or scanner they never saw."
)


def _ci(m: Mapping, key: str) -> str:
    return f"{m[key]:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


def batch_table(files: Mapping[str, str]) -> pd.DataFrame:
    """Rows: backbones; the probes, chance and the robustness index."""
    rows = []
    for backbone, path in sorted(files.items()):
        r = json.loads(Path(path).read_text())
        rows.append(
            {
                "backbone": backbone,
                "class probe BA": _ci(r["class_probe"], "balanced_accuracy"),
                f"{r['batch_column']} probe BA": _ci(r["batch_probe"], "balanced_accuracy"),
                f"{r['batch_column']} chance": f"{r['batch_probe']['chance']:.3f}",
                "robustness index": _ci(r["robustness"], "robustness_index"),
                "k": r["robustness"]["k"],
            }
        )
    return pd.DataFrame(rows)


def plot_batch(files: Mapping[str, str], out_png: Path, task: str) -> Path | None:
    """Per backbone: class and batch probe accuracy against chance, and the robustness index."""
    from cytofm.report.figures import _plt

    results = {b: json.loads(Path(p).read_text()) for b, p in sorted(files.items())}
    if not results:
        return None
    plt = _plt()
    fig, (ax, ax_ri) = plt.subplots(1, 2, figsize=(3.2 + 1.4 * len(results), 3.2))
    x = np.arange(len(results))
    column = next(iter(results.values()))["batch_column"]
    for offset, (key, label, colour) in enumerate(
        (("class_probe", "class", "tab:blue"), ("batch_probe", column, "tab:orange"))
    ):
        vals = [r[key]["balanced_accuracy"] for r in results.values()]
        err = np.array(
            [
                [v - r[key]["ci95"][0], r[key]["ci95"][1] - v]
                for v, r in zip(vals, results.values(), strict=True)
            ]
        ).T
        ax.bar(x + (offset - 0.5) * 0.38, vals, 0.36, yerr=err, color=colour, label=label)
    chance = [r["batch_probe"]["chance"] for r in results.values()]
    ax.hlines(chance, x - 0.4, x + 0.4, colors="k", linestyles="dashed", label=f"{column} chance")
    ax.set_xticks(x, list(results), fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("balanced accuracy (test)")
    ax.legend(fontsize=7)
    ax.set_title("linear probe predicting", fontsize=9)
    ri = [r["robustness"]["robustness_index"] for r in results.values()]
    err = np.array(
        [
            [v - r["robustness"]["ci95"][0], r["robustness"]["ci95"][1] - v]
            for v, r in zip(ri, results.values(), strict=True)
        ]
    ).T
    ax_ri.bar(x, ri, 0.5, yerr=err, color="tab:green")
    ax_ri.axhline(0.5, color="k", ls="dashed", lw=1)
    ax_ri.set_xticks(x, list(results), fontsize=8)
    ax_ri.set_ylim(0, 1)
    ax_ri.set_title("robustness index", fontsize=9)
    fig.suptitle(f"{task}: {column} in the features", fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out_png


def held_out_table(jsons) -> pd.DataFrame:
    """Rows: backbone x shown setting of a leave-one-out task; a column per held-out value
    (balanced accuracy, mean over seeds), the pooled value and the lowest."""
    from cytofm.eval.predictions import block_key
    from cytofm.report.tables import setting_label, shown_block
    from cytofm.results import read_result

    rows = []
    for path in jsons:
        res = read_result(path)
        blocks = {block_key(b["shots"], b.get("fraction")): b for b in res["results"]}
        key = shown_block(blocks)
        if key is None or "held_out" not in blocks[key]:
            continue
        block = blocks[key]
        order, setting = setting_label(res["protocol"], block["shots"], None)
        row = {"_key": order, "setting": setting, "backbone": res["backbone"]}
        per_value = {h["value"]: float(np.mean(h["balanced_accuracy"])) for h in block["held_out"]}
        row.update({f"held out: {v}": f"{a:.3f}" for v, a in per_value.items()})
        row["pooled"] = f"{block['summary']['balanced_accuracy']['mean']:.3f}"
        worst = min(per_value, key=per_value.get)
        row["lowest"] = f"{per_value[worst]:.3f} ({worst})"
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).sort_values(["_key", "backbone"], kind="stable")
    return table.drop(columns="_key").reset_index(drop=True)
