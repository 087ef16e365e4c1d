"""Paired comparisons of backbones on the same test rows and seeds.

For every result block (task x protocol x label budget) each backbone is compared with the
control (backbones of kind ``random``) and with every other backbone: the difference of each
metric, its 95% CI over test items and seeds, and a p-value (:func:`paired_difference`). The
verdict is "better" or "worse" only when the interval excludes zero, else "no difference": the
report bolds a winner only on that evidence.
"""

from __future__ import annotations

import itertools

import pandas as pd

from cytofm.eval.metrics import SCALARS, paired_difference
from cytofm.eval.predictions import predictions_path, result_blocks

__all__ = ["COMPARISON_COLUMNS", "compare_results", "predictions_path", "verdicts"]

COMPARISON_COLUMNS = [
    "task",
    "protocol",
    "shots",
    "fraction",
    "block",
    "backbone",
    "versus",
    "versus_is_control",
    "metric",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "n_seeds",
    "resampled",
    "verdict",
]


def _verdict(lo: float, hi: float) -> str:
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "no difference"


def compare_results(result_jsons, n_boot: int = 1000) -> pd.DataFrame:
    """One row per (block, backbone, other backbone, metric); see the module doc."""
    rows = []
    by_setting: dict[tuple, dict] = {}
    for res, block, key, pred in result_blocks(result_jsons):
        setting = (res["task"], res["protocol"], key)
        entry = {
            "kind": res.get("backbone_kind", ""),
            "probas": pred["blocks"][key],
            "y": pred["y_test"],
            "groups": pred["groups"],
            "shots": block.get("shots"),
            "fraction": block.get("fraction"),
        }
        by_setting.setdefault(setting, {})[res["backbone"]] = entry
    for (task, protocol, key), backbones in sorted(by_setting.items()):
        names = sorted(backbones)
        pairs = []
        for a, b in itertools.permutations(names, 2):
            a_ctrl = backbones[a]["kind"] == "random"
            b_ctrl = backbones[b]["kind"] == "random"
            if (b_ctrl and not a_ctrl) or (not a_ctrl and not b_ctrl and a < b):
                pairs.append((a, b))
        for a, b in pairs:
            ea, eb = backbones[a], backbones[b]
            if len(ea["probas"]) != len(eb["probas"]) or len(ea["y"]) != len(eb["y"]):
                continue  # different seeds or test rows: not a paired comparison
            diff = paired_difference(
                ea["y"], ea["probas"], eb["probas"], n_boot=n_boot, groups=ea["groups"]
            )
            for metric in SCALARS:
                d = diff[metric]
                lo, hi = d["ci95"]
                rows.append(
                    {
                        "task": task,
                        "protocol": protocol,
                        "shots": ea["shots"],
                        "fraction": ea["fraction"],
                        "block": key,
                        "backbone": a,
                        "versus": b,
                        "versus_is_control": eb["kind"] == "random",
                        "metric": metric,
                        "difference": d["difference"],
                        "ci_low": lo,
                        "ci_high": hi,
                        "p_value": d["p_value"],
                        "n_seeds": len(ea["probas"]),
                        "resampled": "groups" if ea["groups"] is not None else "rows",
                        "verdict": _verdict(lo, hi),
                    }
                )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def verdicts(comparisons: pd.DataFrame | None, metric: str) -> dict[tuple, dict]:
    """(protocol, block) -> {"winner": backbone or None, "pairs": rows of the metric}.

    A row has a winner when one backbone's mean difference against every other backbone of
    the row is positive with a CI that excludes zero; otherwise none (no bold)."""
    out: dict[tuple, dict] = {}
    if comparisons is None or comparisons.empty:
        return out
    part = comparisons[comparisons["metric"] == metric]
    for (protocol, block), rows in part.groupby(["protocol", "block"], sort=False):
        names = sorted(set(rows["backbone"]) | set(rows["versus"]))
        winner = None
        for cand in names:
            beats_all = True
            for other in names:
                if other == cand:
                    continue
                fwd = rows[(rows["backbone"] == cand) & (rows["versus"] == other)]
                rev = rows[(rows["backbone"] == other) & (rows["versus"] == cand)]
                if len(fwd):
                    ok = fwd["ci_low"].iloc[0] > 0
                elif len(rev):
                    ok = rev["ci_high"].iloc[0] < 0
                else:
                    ok = False
                beats_all &= bool(ok)
            if beats_all:
                winner = cand
                break
        out[(protocol, block)] = {"winner": winner, "pairs": rows}
    return out
