"""Per-task summary of the result JSONs: one table row per backbone x protocol x shots
(drawn by the report's ``plot_fewshot`` and ``plot_mil``).

A backbone evaluated on several pretraining checkpoints (``pretrain.seeds``) gets one row per
setting that pools them (:mod:`cytofm.eval.checkpoints`): the mean over checkpoints and their
evaluation seeds, and an interval whose top level is the checkpoint; ``n_checkpoints`` says how
many stand behind the row and ``checkpoints`` names them. A backbone on one checkpoint reads its
JSON's figures as they are.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from cytofm.eval.checkpoints import group_by_family
from cytofm.eval.metrics import SCALARS, summarise
from cytofm.eval.predictions import block_key, load_predictions, predictions_path
from cytofm.results import read_result

__all__ = ["summary_table"]

log = logging.getLogger(__name__)

COLUMNS = ["task", "backbone", "protocol", "shots", "fraction"]


def summary_table(
    result_jsons: list[str | Path], checkpoints: dict | None = None, n_boot: int = 1000
) -> pd.DataFrame:
    """Rows of mean, std and CI of every scalar metric; ``checkpoints`` (backbone ->
    [configured backbone, checkpoint index]) pools the checkpoints of one backbone."""
    rows = []
    results = [(path, read_result(path)) for path in result_jsons]
    for (family, _), members in group_by_family(results, checkpoints).items():
        pooled = _pooled_rows(family, members, n_boot) if len(members) > 1 else None
        if pooled is None:
            for _, _, res in members:
                rows += _json_rows(res)
        else:
            rows += pooled
    table = pd.DataFrame(rows)
    if "fraction" not in table:
        table["fraction"] = None
    table["fraction"] = pd.to_numeric(table["fraction"])
    for column in ("skipped", "budget", "checkpoints"):
        if column not in table:
            table[column] = ""
        table[column] = table[column].fillna("")
    if "n_checkpoints" in table:
        table["n_checkpoints"] = table["n_checkpoints"].fillna(1).astype(int)
    return table


def _head(res: dict, block: dict, backbone: str) -> dict:
    return {
        "task": res["task"],
        "backbone": backbone,
        "protocol": res["protocol"],
        "shots": block["shots"] if block["shots"] is not None else "all",
        "fraction": block.get("fraction"),
        "n_seeds": len(block["runs"]),
        "n_test": res["split"]["n_test"],
        "budget": _budget_text(block.get("budget")),
    }


def _skipped_rows(res: dict, backbone: str) -> list[dict]:
    return [
        {
            "task": res["task"],
            "backbone": backbone,
            "protocol": res["protocol"],
            "shots": skip["shots"],
            "skipped": skip["reason"],
        }
        for skip in res.get("skipped", [])
    ]


def _json_rows(res: dict) -> list[dict]:
    """One checkpoint: the JSON's own figures."""
    rows = []
    for block in res["results"]:
        row = _head(res, block, res["backbone"])
        row["n_checkpoints"] = 1
        row["checkpoints"] = res["backbone"]
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
    return rows + _skipped_rows(res, res["backbone"])


def _same(arrays) -> bool:
    arrays = [a for a in arrays if a is not None]
    return all(np.array_equal(arrays[0], a) for a in arrays[1:])


def _pooled_rows(family: str, members: list, n_boot: int) -> list[dict] | None:
    """Rows pooling the checkpoints of ``family``, or None (each checkpoint then gets its own
    rows, with a warning) when they cannot be pooled: predictions missing, or not the same
    test rows."""
    names = [res["backbone"] for _, _, res in members]
    preds = []
    for _, path, _ in members:
        file = predictions_path(path)
        if not file.is_file():
            log.warning("%s: no predictions beside %s; checkpoints %s not pooled", family, path,
                        names)  # fmt: skip
            return None
        preds.append(load_predictions(file))
    if not (_same([p["y_test"] for p in preds]) and _same([p["test_rows"] for p in preds])):
        log.warning("%s: checkpoints %s tested different rows; not pooled", family, names)
        return None
    first = members[0][2]
    rows = []
    for block in first["results"]:
        key = block_key(block.get("shots"), block.get("fraction"))
        probas, clusters = [], []
        for (index, _, res), pred in zip(members, preds, strict=True):
            keys = {block_key(b.get("shots"), b.get("fraction")) for b in res["results"]}
            if key not in keys or key not in pred["blocks"]:
                break
            probas += list(pred["blocks"][key])
            clusters += [index] * len(pred["blocks"][key])
        else:
            summary = summarise(
                preds[0]["y_test"], probas, n_boot=n_boot, groups=preds[0]["groups"],
                clusters=np.array(clusters),
            )  # fmt: skip
            row = _head(first, block, family)
            row["n_checkpoints"] = len(members)
            row["checkpoints"] = " ".join(names)
            for metric in SCALARS:
                s = summary[metric]
                row[f"{metric}_mean"] = s["mean"]
                row[f"{metric}_std"] = s["std"]
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = s["ci95"]
            row.update(_pooled_truth([res.get("attention_vs_truth") for _, _, res in members]))
            rows.append(row)
            continue
        log.warning("%s: block %s is missing from some of %s; not pooled", family, key, names)
    seen = set()
    for _, _, res in members:  # a setting skipped on any checkpoint
        for row in _skipped_rows(res, family):
            if (row["protocol"], row["shots"]) not in seen:
                seen.add((row["protocol"], row["shots"]))
                rows.append(row)
    return rows


def _pooled_truth(truths: list[dict | None]) -> dict:
    """Attention against true cell classes over checkpoints: the mean of the checkpoints'
    means; the interval adds in quadrature their average half-width (test slides and seeds)
    and the t interval of the checkpoint means (their spread, n - 1 degrees of freedom)."""
    if not all(truths):
        return {}
    out = {}
    n = len(truths)
    for metric in ("auroc", "top_k_positive_rate"):
        means = np.array([t[metric]["mean"] for t in truths], dtype=float)
        half = np.mean([(t[metric]["ci95"][1] - t[metric]["ci95"][0]) / 2 for t in truths])
        spread = float(student_t.ppf(0.975, n - 1) * np.std(means, ddof=1) / np.sqrt(n))
        width = float(np.hypot(half, spread))
        mean = float(means.mean())
        out[f"attention_{metric}_mean"] = mean
        out[f"attention_{metric}_std"] = float(np.std(means, ddof=1))
        out[f"attention_{metric}_ci_low"] = max(mean - width, 0.0)
        out[f"attention_{metric}_ci_high"] = min(mean + width, 1.0)
    out["attention_base_rate"] = truths[0]["base_rate"]
    return out


def _budget_text(budget: dict | None) -> str:
    """'' at the protocol's budget, else how it falls short ('S of P steps', a shorter
    learning-rate grid, another rank or other adapted layers)."""
    if not budget or not budget.get("reduced"):
        return ""
    return "; ".join(
        budget.get("departures") or [f"{budget['steps']} of {budget['protocol_steps']} steps"]
    )
