"""Stages ``predict`` and ``predict_table``: a slide task's final model applied to the slides
of the sheet that have no label for it, and the cohort's predictions in one table.

Per slide and backbone: the slide's probability of each class (the mean of the final models,
one per seed), its predicted class, each cell's attention (``.attention.npz``: rows of the
cell store, level-0 centres, attention) and the attention drawn over the slide's thumbnail.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cytofm.eval.mil_model import check_signature, feature_signature, load_mil_model, predict_bag
from cytofm.provenance import provenance
from cytofm.stages.context import JobContext
from cytofm.store import open_store

__all__ = ["run_predict", "run_predict_table"]

log = logging.getLogger(__name__)


def _blank(out_png: Path, text: str) -> None:
    import cv2

    img = np.full((120, 640, 3), 255, np.uint8)
    cv2.putText(img, text[:80], (10, 64), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), img)


def run_predict(
    model_dir: str | Path,
    slide_id: str,
    features_store: str | Path,
    instances_store: str | Path,
    out_json: str | Path,
    out_attention: str | Path,
    out_heatmap: str | Path,
    *,
    slide_path: str | Path | None = None,
    mpp: float | None = None,
    thumbnail_mpp: float = 4.0,
    job: JobContext | None = None,
) -> dict:
    """Score one slide with the model in ``model_dir`` (a ``mil`` job's ``abmil/model``).
    Features made otherwise than the model's training features are refused; a slide without
    cells gets no probabilities and a warning, not a failure."""
    from cytofm.eval.mil_cv import slide_thumbnail
    from cytofm.report.attention import attention_heatmap

    job = job or JobContext()
    models, card = load_mil_model(model_dir)
    check_signature(card, feature_signature(features_store, instances_store), str(features_store))
    params = {"task": card["task"], "backbone": card["backbone"], "slide_id": slide_id,
              "model_sha256": card["weights_sha256"]}  # fmt: skip
    out_json, out_attention, out_heatmap = Path(out_json), Path(out_attention), Path(out_heatmap)
    with job.run("predict", params) as run:
        fs = open_store(features_store)
        feats = np.asarray(fs["features"][:], np.float32)
        rows = np.asarray(fs["rows"][:], np.int64)
        coords = np.asarray(open_store(instances_store)["coords"][:], float).reshape(-1, 2)[rows]
        classes = list(card["classes"])
        warning = ""
        if len(feats) == 0:
            probs, attention = np.full(len(classes), np.nan), np.zeros(0)
            warning = f"slide '{slide_id}' has no cells: no prediction"
            log.warning(warning)
        else:
            probs, attention = predict_bag(models, feats)
        out_attention.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out_attention, rows=rows, coords=coords, attention=attention.astype(np.float32))
        predicted = classes[int(np.argmax(probs))] if len(feats) else ""
        title = f"{slide_id}  {card['task']}: {predicted or 'no cells'}"
        if len(feats) and slide_path:
            title += f"  P={float(np.max(probs)):.2f}"
            thumb, down, _ = slide_thumbnail(slide_path, slide_id, mpp, thumbnail_mpp)
            attention_heatmap(thumb, coords, attention, down, out_heatmap, title)
        else:
            _blank(out_heatmap, title)
        result = {
            "slide_id": slide_id,
            "task": card["task"],
            "backbone": card["backbone"],
            "classes": classes,
            "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
            "predicted": predicted,
            "n_cells": int(len(feats)),
            "warning": warning,
            "model": {
                "weights_sha256": card["weights_sha256"],
                "n_models": card["n_models"],
                "cross_validation_auroc": card["cross_validation"].get("auroc"),
            },
            "provenance": provenance("predict", params),
        }
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        if len(feats):
            run.log_metrics({f"p.{c}": float(p) for c, p in zip(classes, probs, strict=True)})
        run.log_artifact(out_json)
        run.log_artifact(out_heatmap, "heatmap")
        log.info("%s: %s (%s)", slide_id, predicted or "no cells", card["backbone"])
    return result


def run_predict_table(
    predictions: Sequence[str | Path], out_csv: str | Path, job: JobContext | None = None
) -> int:
    """One row per slide and backbone: the predicted class and each class's probability."""
    import pandas as pd

    job = job or JobContext()
    with job.run("predict_table", {"n": len(predictions)}) as run:
        rows = []
        for path in predictions:
            r = json.loads(Path(path).read_text())
            rows.append(
                {
                    "slide_id": r["slide_id"],
                    "task": r["task"],
                    "backbone": r["backbone"],
                    "predicted": r["predicted"],
                    "n_cells": r["n_cells"],
                    **{f"p_{c}": p for c, p in r["probabilities"].items()},
                    "model_sha256": r["model"]["weights_sha256"],
                }
            )
        table = pd.DataFrame(rows).sort_values(["slide_id", "backbone"], kind="stable")
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_csv, index=False)
        run.log_metrics({"n_predictions": len(table)})
        run.log_artifact(out_csv)
    return len(table)
