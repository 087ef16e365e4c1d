"""Stage ``detection_eval``: detected cell centres against tables of true cells.

Every slide whose sample-sheet row names a ``cell_truth`` table (``x``, ``y`` in level-0
pixels; the demo writes one per slide) is scored: detections matched one-to-one to true centres
within ``tolerance_um`` (Hungarian), recall, precision and F1 per slide and pooled, in
``results/qc/detection.json``, with an overlay of truth and detections per slide in
``results/qc/detection/`` and the figures in the report's detection table. It is its own job,
reading the cell stores: adding or changing a truth table scores again without detecting again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cytofm.cells.metrics import match_points
from cytofm.errors import InputDataError
from cytofm.stages.context import JobContext
from cytofm.store import open_store
from cytofm.store_attrs import read_attrs

__all__ = ["read_truth", "run_detection_eval"]

log = logging.getLogger(__name__)


def read_truth(path: str | Path, slide_id: str) -> pd.DataFrame:
    """A table of true cells (TSV or CSV with ``x``, ``y`` in level-0 pixels; other columns
    such as ``class`` are kept)."""
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputDataError(
            f"slide '{slide_id}': cannot read its cell_truth table {path}: {e}. Fix the "
            "sheet's cell_truth column (a TSV/CSV with x, y in level-0 pixels)"
        ) from None
    missing = {"x", "y"} - set(table.columns)
    if missing:
        raise InputDataError(
            f"slide '{slide_id}': its cell_truth table {path} lacks column(s) "
            f"{sorted(missing)}; it needs x, y (level-0 pixels) and may have class"
        )
    return table


def run_detection_eval(
    cell_stores: Sequence[str | Path],
    truth_tables: Sequence[str | Path],
    tolerance_um: float,
    out_json: str | Path,
    job: JobContext | None = None,
    slides: Sequence[dict] | None = None,
    out_overlays: str | Path | None = None,
) -> dict:
    """Per-slide and pooled recall/precision/F1 within ``tolerance_um`` of a true centre.
    ``slides``: per store, ``{"path", "mpp", "backend"}`` to draw ``out_overlays/<slide>.png``
    (:func:`cytofm.report.qc.detection_overlay`)."""
    job = job or JobContext()
    per_slide = {}
    totals = {"tp": 0, "fp": 0, "fn": 0}
    overlays = Path(out_overlays) if out_overlays else None
    if overlays:
        overlays.mkdir(parents=True, exist_ok=True)
    for i, (store_path, truth_path) in enumerate(zip(cell_stores, truth_tables, strict=True)):
        store = open_store(store_path)
        attrs = read_attrs(store, "cells", str(store_path))
        mpp = float(attrs.slide_mpp)
        truth = read_truth(truth_path, attrs.slide_id)[["x", "y"]].to_numpy(float)
        coords = np.asarray(store["coords"][:], float).reshape(-1, 2)
        res = match_points(coords * mpp, truth * mpp, tolerance_um)
        res["mean_distance_um"] = res.pop("mean_distance")
        res["tolerance_um"] = tolerance_um
        res["detections_per_true_cell"] = len(coords) / max(len(truth), 1)
        per_slide[attrs.slide_id] = res
        for k in totals:
            totals[k] += res[k]
        if overlays and slides:
            _overlay(slides[i], attrs.slide_id, coords, truth, tolerance_um / mpp, overlays)
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
        if overlays:
            run.log_artifacts(overlays, "qc/detection")
    return result


def _overlay(slide: dict, slide_id: str, coords, truth, tolerance_px: float, folder: Path):
    from cytofm.report.qc import detection_overlay
    from cytofm.wsi.reader import open_slide

    try:
        with open_slide(
            slide["path"], slide_id, slide.get("mpp"), slide.get("backend", "auto")
        ) as s:
            detection_overlay(s, coords, truth, tolerance_px, folder / f"{slide_id}.png")
    except (OSError, InputDataError) as e:  # the figures stand without the picture
        log.warning("%s: no detection overlay: %s", slide_id, e)
