"""Stage ``detection_eval``: detected cell centres vs. the demo's ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cytofm.cells.metrics import match_points
from cytofm.stages.context import JobContext
from cytofm.store import open_store
from cytofm.store_attrs import read_attrs

__all__ = ["run_detection_eval"]


def run_detection_eval(
    cell_stores: list[str | Path],
    truth_tables: list[str | Path],
    tolerance_um: float,
    out_json: str | Path,
    job: JobContext | None = None,
) -> dict:
    """Per-slide and pooled recall/precision/F1 within ``tolerance_um`` of a true centre."""
    job = job or JobContext()
    per_slide = {}
    totals = {"tp": 0, "fp": 0, "fn": 0}
    for store_path, truth_path in zip(cell_stores, truth_tables, strict=True):
        store = open_store(store_path)
        attrs = read_attrs(store, "cells", str(store_path))
        mpp = float(attrs.slide_mpp)
        truth = pd.read_csv(truth_path, sep="\t")
        res = match_points(
            store["coords"][:] * mpp, truth[["x", "y"]].to_numpy() * mpp, tolerance_um
        )
        res["mean_distance_um"] = res.pop("mean_distance")
        per_slide[attrs.slide_id] = res
        for k in totals:
            totals[k] += res[k]
    tp, fp, fn = totals["tp"], totals["fp"], totals["fn"]
    pooled = {
        "recall": tp / max(tp + fn, 1),
        "precision": tp / max(tp + fp, 1),
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        **totals,
    }
    result = {
        "tolerance_um": tolerance_um,
        "pooled": pooled,
        "per_slide": per_slide,
        "min_recall": float(np.min([r["recall"] for r in per_slide.values()])),
        "min_precision": float(np.min([r["precision"] for r in per_slide.values()])),
    }
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps(result, indent=2))
    with job.run("detection_eval", {"tolerance_um": tolerance_um}) as run:
        run.log_metrics({f"detection.{k}": v for k, v in pooled.items()})
        run.log_artifact(out_json)
    return result
