"""Stage ``mil``: slide-level attention MIL as an evaluation protocol (``abmil``).

Bags are the cached cell (or tile) features of each slide; labels and patient groups come from
the sample sheet. The cross-validation, what the attention's figures show and its score against
true cells are :mod:`cytofm.eval.mil_cv`; this stage runs them in one tracked job, draws the
figures (:mod:`cytofm.report.attention`) and writes the result JSON (same layout as the
patch-level protocols'), ``predictions.npz`` and ``attention.zarr``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cytofm.config import EvalConfig, SlideTaskConfig
from cytofm.eval.mil_cv import (
    attention_summary,
    attention_truth_scores,
    cross_validate,
    load_cohort,
    mil_result,
    result_block,
    slide_figures,
    write_attention,
)
from cytofm.eval.mil_model import (
    feature_signature,
    final_epochs,
    save_mil_model,
    train_final_models,
)
from cytofm.eval.predictions import save_predictions
from cytofm.provenance import provenance
from cytofm.report.attention import draw_heatmap, draw_montage
from cytofm.results import write_result
from cytofm.stages.context import JobContext

__all__ = ["attention_truth_scores", "run_mil"]

log = logging.getLogger(__name__)


def run_mil(
    task: SlideTaskConfig,
    cfg: EvalConfig,
    backbone: str,
    cohort: Sequence[Mapping[str, Any]],
    out_json: str | Path,
    out_dir: str | Path,
    *,
    tolerance_um: float = 6.0,
    thumbnail_mpp: float = 4.0,
    backbone_kind: str = "",
    exposure: dict | None = None,
    pretrained_dir: str | Path | None = None,
    job: JobContext | None = None,
) -> dict[str, Any]:
    """Cross-validated ABMIL on ``cohort`` rows (``slide_id``, ``label``, ``group``,
    ``features`` store, ``instances`` store; optional ``path``/``mpp`` for thumbnails and
    ``truth`` for a table of true cells with x, y (level-0 px) and class). A cohort slide whose
    file a pretrained backbone's pretraining read (``pretrained_dir``) is refused."""
    job = job or JobContext()
    exposure = _checked_exposure(task, cohort, backbone_kind, exposure, pretrained_dir)
    co = load_cohort(task, cohort)
    out_dir = Path(out_dir)
    params = {"task": task.to_dict(), "evaluate": cfg.part("mil"), "backbone": backbone}
    params.update(n_slides=len(co.slides), top_k=cfg.mil.top_k)
    with job.run("mil", params) as run:
        t0 = time.perf_counter()
        cv = cross_validate(co, task, cfg, f"abmil {backbone}")
        block = result_block(co, cv, task, cfg.bootstrap)
        save_predictions(out_dir / "predictions.npz", co.y, co.groups, **cv.predictions())
        write_attention(out_dir / "attention.zarr", co, cv, backbone, task)
        scores = _slide_outputs(co, cv, task, cfg.mil.top_k, out_dir, tolerance_um, thumbnail_mpp)
        attention_eval = attention_summary(scores, task, cfg.bootstrap, tolerance_um)
        result = mil_result(
            co,
            cv,
            task,
            block,
            backbone=backbone,
            backbone_kind=backbone_kind,
            exposure=exposure,
            attention_vs_truth=attention_eval,
            seconds=time.perf_counter() - t0,
            evaluate=cfg.part("mil"),
            provenance=provenance("mil", params),
        )
        write_result(out_json, result)
        epochs = _final_model(co, cv, task, cfg, block, params, backbone_kind, out_dir / "model")
        metrics = {f"abmil.{m}": v["mean"] for m, v in block["summary"].items()}
        metrics["final_model.epochs"] = epochs
        if attention_eval:
            metrics["attention.auroc"] = attention_eval["auroc"]["mean"]
            metrics["attention.top_k_positive_rate"] = attention_eval["top_k_positive_rate"]["mean"]
        metrics["seconds_per_fold"] = result["seconds_per_fold"]
        run.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        _log_outputs(run, out_json, out_dir, f"{task.name}.{backbone}.abmil")
        attn = f"{attention_eval['auroc']['mean']:.3f}" if attention_eval else "n/a"
        auroc = block["summary"]["auroc"]["mean"]
        log.info(f"{task.name}/{backbone}/abmil: slide AUROC {auroc:.3f}, attention AUROC {attn}")
    return result


def _checked_exposure(task, cohort, backbone_kind, exposure, pretrained_dir) -> dict | None:
    """``exposure`` with the check of the cohort's slide files against what the pretrained
    backbone's pretraining read (:func:`cytofm.inductive.check_cohort`; refuses a leak)."""
    if not (pretrained_dir and backbone_kind == "pretrained"):
        return exposure
    from cytofm.inductive import check_cohort

    slides = [(str(r["slide_id"]), r["instances"]) for r in cohort]
    transductive = bool((exposure or {}).get("transductive"))
    return {**(exposure or {}), **check_cohort(task.name, slides, pretrained_dir, transductive)}


def _slide_outputs(co, cv, task, top_k, out_dir, tolerance_um, thumbnail_mpp) -> dict:
    """Each slide's top-k montage and attention heatmap (when its file is known) drawn in
    ``out_dir``; per slide with a truth table, the attention's scores against it (per seed)."""
    scores = {}
    for fig in slide_figures(co, cv, task, top_k, out_dir, tolerance_um, thumbnail_mpp):
        draw_montage(fig.montage)
        if fig.heatmap is not None:
            draw_heatmap(fig.heatmap)
        if fig.truth is not None:
            scores[fig.slide] = fig.truth
    return scores


def _log_outputs(run, out_json: Path, out_dir: Path, model_name: str) -> None:
    """The result, heatmaps, montages and the final model (also as a registered model)."""
    run.log_artifact(out_json)
    for sub in ("heatmap", "montage", "model"):
        if (out_dir / sub).is_dir():
            run.log_artifacts(out_dir / sub, sub)
    run.log_model("abmil", out_dir / "model", model_name, "mlflow_model")


def _final_model(co, cv, task, cfg, block, params, backbone_kind, out) -> int:
    """Models on every labelled slide (one per seed, the folds' median best epoch), saved in
    ``out`` with the card saying what they were trained on and how well the cross-validation
    scored them; returns the epochs."""
    backbone = params["backbone"]
    train_args = {k: v for k, v in cfg.mil.to_dict().items() if k != "top_k"}  # what training read
    epochs = final_epochs(cv.folds, cfg.mil.max_epochs)
    models = train_final_models(co.bags, co.y, len(co.classes), task.seeds, epochs, cfg.mil)
    counts = np.bincount(co.y, minlength=len(co.classes))
    card = {
        "task": task.name,
        "label": task.label,
        "classes": co.classes,
        "protocol": "abmil",
        "instances": task.instances,
        "backbone": backbone,
        "backbone_kind": backbone_kind,
        "features": feature_signature(co.rows[0]["features"], co.rows[0]["instances"]),
        "architecture": {
            "name": "gated attention MIL",
            "in_dim": int(co.bags[0].shape[1]),
            **{k: train_args[k] for k in ("hidden", "attn_dim", "dropout")},
        },
        "training": {
            "slides": co.slides,
            "class_counts": dict(zip(co.classes, counts.tolist(), strict=True)),
            "seeds": [int(s) for s in task.seeds],
            "epochs": epochs,
            "epochs_from": "median best epoch of the cross-validation folds",
            "train_args": train_args,
        },
        "cross_validation": block["summary"],
        "provenance": provenance("mil", params),
    }
    save_mil_model(out, models, card)
    return epochs
