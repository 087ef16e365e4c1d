"""Paired comparisons of backbones on the same test rows and seeds.

For every result block (task x protocol x label budget) each backbone is compared with the
controls (backbones of kind ``random`` and ``morphometry``) and with every other backbone that is
not a control: the difference of each
metric, its 95% CI over test items and seeds, and a p-value (:func:`paired_difference`).
Results are paired only when they tested the same dataset rows in the same order with the same
seeds (read from their predictions files); others are left out with a warning.

A backbone evaluated on several pretraining checkpoints (``pretrain.seeds``; ``checkpoints``
maps each result's backbone to its configured name and checkpoint index) is compared as one:
checkpoint i of ``cytofm`` is paired with checkpoint i of its random control, and with the one
result of a backbone that has a single checkpoint (morphometry, a timm model); the checkpoints
are the top level of the interval and p-value (``n_checkpoints``). Two backbones with different
numbers of checkpoints, neither one, are not compared.

A task's comparisons are many tests: every backbone pair, protocol, label budget. The p-values
are therefore adjusted by Holm's step-down method over each (task, metric) family
(``p_holm``), which keeps the chance of any false "better" in the family at 5%. The verdict is
"better" or "worse" only when the adjusted p-value is below 0.05, else "no difference": the
report bolds a winner only on that evidence. ``ci_low``/``ci_high`` are the unadjusted 95%
intervals (they exclude zero exactly when the raw ``p_value`` is below 0.05).
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd

from cytofm.eval.checkpoints import family_of
from cytofm.eval.metrics import SCALARS, paired_difference
from cytofm.eval.predictions import predictions_path, result_blocks, run_seeds

__all__ = [
    "ALPHA",
    "COMPARISON_COLUMNS",
    "compare_results",
    "holm",
    "predictions_path",
    "verdicts",
]

log = logging.getLogger(__name__)

ALPHA = 0.05
# the controls every learned backbone is read against: random weights of its architecture, and
# hand-made nucleus and cell measurements
CONTROL_KINDS = ("random", "morphometry")

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
    "p_holm",
    "family_size",
    "n_seeds",
    "n_checkpoints",
    "resampled",
    "verdict",
]


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN, and is not counted):
    the i-th smallest of m is multiplied by m - i + 1, then made monotone and capped at 1."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adjusted, 1.0)
    return out


def _verdict(difference: float, p_adjusted: float) -> str:
    if np.isfinite(p_adjusted) and p_adjusted < ALPHA:
        return "better" if difference > 0 else "worse"
    return "no difference"


def _paired(a: dict, b: dict) -> str | None:
    """Why two results cannot be paired, or None when they can."""
    if len(a["probas"]) != len(b["probas"]) or len(a["y"]) != len(b["y"]):
        return (
            f"{len(a['probas'])} vs {len(b['probas'])} seeds, {len(a['y'])} vs {len(b['y'])} rows"
        )
    for what in ("rows", "seeds"):
        x, y = a[what], b[what]
        if x is not None and y is not None and not np.array_equal(x, y):
            return f"different test {what}" if what == "rows" else "different seeds"
    return None


def _matched(a: list[dict], b: list[dict]) -> list[tuple[int, dict, dict]] | None:
    """(checkpoint, A's entry, B's entry) pairs: index by index when both have the same
    checkpoints, the single result of one against every checkpoint of the other; None when
    they cannot be matched."""
    if [e["index"] for e in a] == [e["index"] for e in b]:
        return [(ea["index"], ea, eb) for ea, eb in zip(a, b, strict=True)]
    if len(b) == 1:
        return [(ea["index"], ea, b[0]) for ea in a]
    if len(a) == 1:
        return [(eb["index"], a[0], eb) for eb in b]
    return None


def compare_results(result_jsons, n_boot: int = 1000, checkpoints=None) -> pd.DataFrame:
    """One row per (block, backbone, other backbone, metric); see the module doc."""
    rows = []
    by_setting: dict[tuple, dict[str, list[dict]]] = {}
    for res, block, key, pred in result_blocks(result_jsons):
        setting = (res["task"], res["protocol"], key)
        test_rows = pred.get("test_rows")
        if test_rows is None and res.get("test_rows") is not None:
            test_rows = np.asarray(res["test_rows"])
        family, index = family_of(res["backbone"], checkpoints)
        entry = {
            "index": index,
            "kind": res.get("backbone_kind", ""),
            "probas": pred["blocks"][key],
            "y": pred["y_test"],
            "groups": pred["groups"],
            "rows": test_rows,
            "seeds": pred.get("seeds", {}).get(key, run_seeds(block)),
            "shots": block.get("shots"),
            "fraction": block.get("fraction"),
        }
        by_setting.setdefault(setting, {}).setdefault(family, []).append(entry)
    for (task, protocol, key), backbones in sorted(by_setting.items()):
        for entries in backbones.values():
            entries.sort(key=lambda e: e["index"])
        names = sorted(backbones)
        pairs = []
        for a, b in itertools.permutations(names, 2):
            a_ctrl = backbones[a][0]["kind"] in CONTROL_KINDS
            b_ctrl = backbones[b][0]["kind"] in CONTROL_KINDS
            if (b_ctrl and not a_ctrl) or (not a_ctrl and not b_ctrl and a < b):
                pairs.append((a, b))
        for a, b in pairs:
            matched = _matched(backbones[a], backbones[b])
            why = None if matched else (
                f"{len(backbones[a])} vs {len(backbones[b])} checkpoints"
            )  # fmt: skip
            for _, ea, eb in matched or []:
                why = why or _paired(ea, eb)
            if why:
                log.warning("%s/%s/%s: %s vs %s not compared: %s", task, protocol, key, a, b, why)
                continue
            ea = matched[0][1]
            probas_a = [p for _, x, _ in matched for p in x["probas"]]
            probas_b = [p for _, _, y in matched for p in y["probas"]]
            clusters = np.array([i for i, x, _ in matched for _ in x["probas"]])
            diff = paired_difference(
                ea["y"], probas_a, probas_b, n_boot=n_boot, groups=ea["groups"], clusters=clusters
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
                        "versus_is_control": backbones[b][0]["kind"] in CONTROL_KINDS,
                        "metric": metric,
                        "difference": d["difference"],
                        "ci_low": lo,
                        "ci_high": hi,
                        "p_value": d["p_value"],
                        "n_seeds": len(ea["probas"]),
                        "n_checkpoints": len(matched),
                        "resampled": "groups" if ea["groups"] is not None else "rows",
                    }
                )
    out = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    for _, family in out.groupby(["task", "metric"], sort=False):
        out.loc[family.index, "p_holm"] = holm(family["p_value"].to_numpy(float))
        out.loc[family.index, "family_size"] = int(np.isfinite(family["p_value"]).sum())
    out["verdict"] = [_verdict(d, p) for d, p in zip(out["difference"], out["p_holm"], strict=True)]
    if len(out):
        out["family_size"] = out["family_size"].astype(int)
        out["n_checkpoints"] = out["n_checkpoints"].astype(int)
    return out


def verdicts(comparisons: pd.DataFrame | None, metric: str) -> dict[tuple, dict]:
    """(protocol, block) -> {"winner": backbone or None, "pairs": rows of the metric}.

    A row has a winner when one backbone is "better" than every other backbone of the row
    (Holm-adjusted p below 0.05, positive difference); otherwise none (no bold)."""
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
                    ok = fwd["verdict"].iloc[0] == "better"
                elif len(rev):
                    ok = rev["verdict"].iloc[0] == "worse"
                else:
                    ok = False
                beats_all &= bool(ok)
            if beats_all:
                winner = cand
                break
        out[(protocol, block)] = {"winner": winner, "pairs": rows}
    return out
