"""Stages ``predict`` and ``predict_table``: a slide task's final model applied to the slides
of the sheet that have no label for it, and the cohort's predictions in one table.

Per slide and backbone: the slide's probability of each class (the mean of the final models,
one per seed), its predicted class, each cell's attention (``.attention.npz``: rows of the
cell store, level-0 centres, attention) and the attention drawn over the slide's thumbnail;
where the slide task names a ``cell_task``, each cell's class probabilities from that task's
final linear head (``cell_proba`` in the same file) and the slide's make-up by cell class.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from cytofm.eval.cell_head import label_cells, load_cell_head
from cytofm.eval.mil_model import check_signature, feature_signature, load_mil_model, score_slide
from cytofm.provenance import provenance
from cytofm.report.attention import draw_heatmap
from cytofm.stages.context import JobContext

__all__ = ["run_predict", "run_predict_table"]

log = logging.getLogger(__name__)


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
    cell_head_dir: str | Path | None = None,
    job: JobContext | None = None,
) -> dict:
    """Score one slide with the model in ``model_dir`` (a ``mil`` job's ``abmil/model``);
    with ``cell_head_dir`` (a cell task's ``cell_head`` folder) also each cell's class
    probabilities and the slide's make-up by class. Features made otherwise than the models'
    training features are refused; a slide without cells gets no probabilities and a warning,
    not a failure."""
    job = job or JobContext()
    models, card = load_mil_model(model_dir)
    signature = feature_signature(features_store, instances_store)
    check_signature(card, signature, str(features_store))
    head = None
    if cell_head_dir is not None:
        head = load_cell_head(cell_head_dir)
        check_signature(head[1], signature, str(features_store))
    params = {"task": card["task"], "backbone": card["backbone"], "slide_id": slide_id,
              "model_sha256": card["weights_sha256"]}  # fmt: skip
    out_json, out_heatmap = Path(out_json), Path(out_heatmap)
    with job.run("predict", params) as run:
        stores = (features_store, instances_store)
        result, heatmap = score_slide(models, card, slide_id, *stores, out_attention,
                                      out_heatmap, slide_path, mpp, thumbnail_mpp)  # fmt: skip
        draw_heatmap(heatmap)
        if head is not None:
            result["cells"] = _label_cells(head, features_store, out_attention)
        result["provenance"] = provenance("predict", params)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        if result["n_cells"]:
            run.log_metrics({f"p.{c}": p for c, p in result["probabilities"].items()})
        run.log_artifact(out_json)
        run.log_artifact(out_heatmap, "heatmap")
        log.info("%s: %s (%s)", slide_id, result["predicted"] or "no cells", card["backbone"])
    return result


def _label_cells(head, features_store, out_attention) -> dict:
    """Per-cell class probabilities into the attention file; the slide's make-up returned."""
    import numpy as np

    from cytofm.store import open_store

    saved = dict(np.load(out_attention))
    feats = open_store(features_store)["features"][:]
    proba, summary = label_cells(*head, feats, saved["attention"])
    np.savez(out_attention, **saved, cell_proba=proba.astype(np.float32),
             cell_classes=np.asarray(summary["classes"]))  # fmt: skip
    return summary


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
                    **{f"cells_{c}": f for c, f in r.get("cells", {}).get("fraction", {}).items()},
                    **{
                        f"attention_{c}": f
                        for c, f in r.get("cells", {}).get("attention_weighted", {}).items()
                    },
                    "model_sha256": r["model"]["weights_sha256"],
                }
            )
        table = pd.DataFrame(rows).sort_values(["slide_id", "backbone"], kind="stable")
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_csv, index=False)
        run.log_metrics({"n_predictions": len(table)})
        run.log_artifact(out_csv)
    return len(table)
