"""Stage ``mil``: slide-level attention MIL as an evaluation protocol (``abmil``).

Bags are the cached cell (or tile) features of each slide; labels and patient groups come from
the sample sheet. For every seed, patient-grouped stratified folds give each slide one
out-of-fold prediction (an inner grouped split of the training slides stops training early); the
seeds' out-of-fold probabilities are scored and summarised exactly like the patch-level
protocols, and the result JSON has the same layout. Out-of-fold attention of every seed is stored
per instance (``attention.zarr``, aligned with the feature store's rows); the first seed's is drawn
over the slide thumbnail and as a montage of the top-k cells. When a slide has a table of true cell
classes (the demo's ground truth, or a ``cell_truth`` column of the sheet), the attention is
scored against it: AUROC of attention for the ``truth_positive`` classes vs. all others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from cytofm.config import EvalConfig, SlideTaskConfig
from cytofm.errors import InputDataError
from cytofm.eval.metrics import classification_metrics, interval, summarise
from cytofm.eval.mil import check_bags, grouped_folds, predict_mil, train_mil
from cytofm.eval.mil_plots import attention_heatmap, top_cells_montage
from cytofm.eval.predictions import save_predictions
from cytofm.provenance import provenance
from cytofm.stages.context import JobContext
from cytofm.store import atomic_group, atomic_json, open_store

__all__ = ["attention_truth_scores", "run_mil"]

log = logging.getLogger(__name__)


def _inner_split(labels, groups, train, seed):
    """Hold out about a quarter of the training slides (whole patients) for early stopping."""
    n_groups = len(np.unique(groups[train]))
    if n_groups < 4:
        return train, train[:0]
    inner = grouped_folds(labels[train], groups[train], 4, seed)[0]
    return train[inner[0]], train[inner[1]]


def _class_index(labels: Sequence[Any], task: str) -> tuple[np.ndarray, list[str]]:
    """Integer labels; integer-like values (0/1, '1') sort numerically."""
    values = [str(v).strip() for v in labels]
    try:
        classes = [str(c) for c in sorted({int(float(v)) for v in values})]
        values = [str(int(float(v))) for v in values]
    except ValueError:
        classes = sorted(set(values))
    if len(classes) < 2:
        raise InputDataError(
            f"slide task '{task}': the labels hold one class only ({classes}); attention MIL "
            "needs slides of at least two classes"
        )
    return np.array([classes.index(v) for v in values]), classes


def attention_truth_scores(
    attention: np.ndarray,
    coords: np.ndarray,
    truth: pd.DataFrame,
    positive: Sequence[str],
    tolerance_px: float,
    top_k: int,
) -> dict[str, Any]:
    """Attention of one slide against its true cells.

    Detected cells are matched one-to-one to true centres within ``tolerance_px``; unmatched
    detections (debris, split nuclei) are left out. Returns the counts, the AUROC of attention
    for positive vs. other matched cells (NaN when either side is empty), and the share of
    positive cells among the ``top_k`` most attended matched cells next to their base rate.
    """
    from sklearn.metrics import roc_auc_score

    from cytofm.cells.metrics import match_pairs

    missing = {"x", "y", "class"} - set(truth.columns)
    if missing:
        raise InputDataError(
            f"cell truth table lacks column(s) {sorted(missing)}; it needs x, y (level-0 px), class"
        )
    pred_idx, truth_idx, _ = match_pairs(coords, truth[["x", "y"]].to_numpy(), tolerance_px)
    is_pos = truth["class"].astype(str).isin([str(p) for p in positive]).to_numpy()[truth_idx]
    att = np.asarray(attention, float)[pred_idx]
    n_pos = int(is_pos.sum())
    out = {
        "n_cells": int(len(attention)),
        "n_matched": int(len(pred_idx)),
        "n_positive": n_pos,
        "auroc": float("nan"),
        "top_k": int(min(top_k, len(att))),
        "top_k_positive_rate": float("nan"),
        "base_rate": float(n_pos / len(att)) if len(att) else float("nan"),
    }
    if 0 < n_pos < len(att):
        out["auroc"] = float(roc_auc_score(is_pos, att))
    if len(att):
        top = np.argsort(-att, kind="stable")[: out["top_k"]]
        out["top_k_positive_rate"] = float(is_pos[top].mean())
    return out


def _read_bag(features_store: str | Path, slide: str) -> tuple[np.ndarray, np.ndarray]:
    fs = open_store(features_store)
    if "features" not in fs:
        raise InputDataError(f"slide '{slide}': {features_store} is not a feature store")
    feats = np.asarray(fs["features"][:])  # kept float16; batches are cast when used
    rows = np.asarray(fs["rows"][:]) if "rows" in fs else np.arange(len(feats))
    return feats, rows


def _thumbnail(path, slide_id, mpp, thumb_mpp):
    from cytofm.wsi.mask import read_thumbnail
    from cytofm.wsi.reader import open_slide

    with open_slide(path, slide_id, mpp) as slide:
        target = max(thumb_mpp, slide.mpp)
        return read_thumbnail(slide, target), target / slide.mpp, slide.mpp


def _seed_block(values: list[list[float]], n_boot: int, seed: int = 0) -> dict[str, Any]:
    """Mean/std over seeds of the per-seed mean over slides, and a 95% CI over slides (the same
    bootstrap resample for every seed) and seeds, as :func:`cytofm.eval.metrics.summarise`."""
    arr = np.array(values, dtype=float)  # (seeds, slides)
    per_seed = np.nanmean(arr, axis=1) if arr.size else np.array([np.nan])
    rng = np.random.default_rng([seed, 4243])
    boot = []
    n = arr.shape[1] if arr.ndim == 2 else 0
    for _ in range(n_boot if n else 0):
        cols = rng.integers(0, n, size=n)
        boot.append(np.nanmean(arr[:, cols]))
    finite = per_seed[np.isfinite(per_seed)]
    mean = float(np.mean(finite)) if len(finite) else float("nan")
    return {
        "mean": mean,
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
        **interval(mean, np.array(boot, dtype=float), finite),
        "per_seed": per_seed.tolist(),
        "n_slides": int(n),
    }


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
    job: JobContext | None = None,
) -> dict[str, Any]:
    """Cross-validated ABMIL on ``cohort`` rows (``slide_id``, ``label``, ``group``,
    ``features`` store, ``instances`` store; optional ``path``/``mpp`` for thumbnails and
    ``truth`` for a table of true cells with x, y (level-0 px) and class)."""
    job = job or JobContext()
    rows = sorted(cohort, key=lambda r: str(r["slide_id"]))
    slides = [str(r["slide_id"]) for r in rows]
    if len(set(slides)) != len(slides):
        raise InputDataError(f"slide task '{task.name}': duplicated slide ids in the cohort")
    loaded = [_read_bag(r["features"], s) for r, s in zip(rows, slides, strict=True)]
    # a slide where no cell was found has no bag: it is left out of the cohort, and listed
    left_out = [
        {"slide_id": s, "label": str(r["label"]), "reason": "no cells (none found or kept)"}
        for r, s, (f, _) in zip(rows, slides, loaded, strict=True)
        if len(f) == 0
    ]
    if left_out:
        log.warning(
            "slide task '%s': %d slide(s) without cells left out: %s",
            task.name,
            len(left_out),
            ", ".join(x["slide_id"] for x in left_out),
        )
        keep = [i for i, (f, _) in enumerate(loaded) if len(f)]
        rows, slides, loaded = (
            [rows[i] for i in keep],
            [slides[i] for i in keep],
            [loaded[i] for i in keep],
        )
        if not rows:
            raise InputDataError(f"slide task '{task.name}': no slide of the cohort has cells")
    y, classes = _class_index([r["label"] for r in rows], task.name)
    g = np.array([str(r.get("group") or "") or s for r, s in zip(rows, slides, strict=True)])
    bags = [f for _, f in check_bags([(s, f) for s, (f, _) in zip(slides, loaded, strict=True)])]
    train_args = cfg.mil_train_args()
    out_dir = Path(out_dir)
    params = {
        "task": task.to_dict(),
        "evaluate": cfg.part("mil"),
        "backbone": backbone,
        "n_slides": len(slides),
        "top_k": cfg.mil_top_k,
    }
    with job.run("mil", params) as run:
        t0 = time.perf_counter()
        probas, runs = [], []
        attention = {s: [] for s in slides}
        fold_seconds = []
        bar = tqdm(total=len(task.seeds) * task.folds, desc=f"abmil {backbone}", mininterval=5)
        for seed in task.seeds:
            p = np.zeros((len(slides), len(classes)))
            for k, (train, test) in enumerate(grouped_folds(y, g, task.folds, int(seed))):
                tf = time.perf_counter()
                tr, va = _inner_split(y, g, train, int(seed))
                model, hist = train_mil(bags, y, tr, va, len(classes), seed=int(seed), **train_args)
                p[test], attn = predict_mil(model, bags, test, cfg.mil_batch_bags)
                for i, a in zip(test, attn, strict=True):
                    attention[slides[i]].append(a)
                fold_seconds.append(time.perf_counter() - tf)
                runs.append(
                    {
                        "seed": int(seed),
                        "fold": k,
                        "train_slides": [slides[i] for i in tr],
                        "val_slides": [slides[i] for i in va],
                        "test_slides": [slides[i] for i in test],
                        "best_epoch": hist["best_epoch"],
                        "epochs": hist["epochs"],
                        "seconds": fold_seconds[-1],
                    }
                )
                bar.update(1)
            probas.append(p)
        bar.close()
        per_seed = [classification_metrics(y, p, classes) for p in probas]
        block = {
            "shots": None,
            "seed_independent": False,
            "summary": summarise(
                y, probas, n_boot=cfg.bootstrap, seed=0, groups=g if len(set(g)) > 1 else None
            ),
            "runs": [
                {"seed": int(s), "test": m} for s, m in zip(task.seeds, per_seed, strict=True)
            ],
        }

        save_predictions(out_dir / "predictions.npz", y, g, {"all": probas})
        # per-instance attention beside the features: (seeds, n) per slide, rows of the store
        with atomic_group(out_dir / "attention.zarr") as grp:
            for s, (_, feat_rows) in zip(slides, loaded, strict=True):
                sub = grp.create_group(s)
                a = np.stack(attention[s]).astype(np.float32)
                sub.create_array("attention", shape=a.shape, dtype="float32")[:] = a
                sub.create_array("rows", shape=feat_rows.shape, dtype="int64")[:] = feat_rows
            grp.attrs.update(
                {"backbone": backbone, "task": task.name, "seeds": [int(s) for s in task.seeds]}
            )

        truth_scores: dict[str, list[dict]] = {}
        for i, (r, s, (_, feat_rows)) in enumerate(zip(rows, slides, loaded, strict=True)):
            store = open_store(r["instances"])
            coords = np.asarray(store["coords"][:])[feat_rows]
            first = attention[s][0]
            # read only the top-k patches, in store order, then draw them most attended first
            top = np.sort(np.argsort(-first, kind="stable")[: cfg.mil_top_k])
            order = np.argsort(feat_rows[top])
            images = np.asarray(store["images"].get_orthogonal_selection((feat_rows[top][order],)))
            top_cells_montage(
                images, first[top][order], cfg.mil_top_k, out_dir / "montage" / f"{s}.png"
            )
            slide_mpp = float(store.attrs.get("slide_mpp") or 0) or None
            table = None
            if r.get("truth") and task.truth_positive:
                table = pd.read_csv(r["truth"], sep=None, engine="python")
            if r.get("path"):
                thumb, down, slide_mpp = _thumbnail(r["path"], s, r.get("mpp"), thumbnail_mpp)
                attention_heatmap(
                    thumb,
                    coords,
                    first,
                    down,
                    out_dir / "heatmap" / f"{s}.png",
                    f"{s}  label {classes[y[i]]}  P(label)={probas[0][i, y[i]]:.2f}",
                    highlight_px=None
                    if table is None or not {"x", "y", "class"} <= set(table.columns)
                    else table.loc[
                        table["class"].astype(str).isin([str(c) for c in task.truth_positive]),
                        ["x", "y"],
                    ].to_numpy(),
                    highlight_label=f"true {'/'.join(task.truth_positive)} cell",
                )
            if table is not None:
                if slide_mpp is None:
                    raise InputDataError(f"slide '{s}': no mpp known to match cells to truth")
                truth_scores[s] = [
                    attention_truth_scores(
                        a,
                        coords,
                        table,
                        task.truth_positive,
                        tolerance_um / slide_mpp,
                        cfg.mil_top_k,
                    )
                    for a in attention[s]
                ]
        attention_eval = None
        if truth_scores:
            scored = [s for s, v in truth_scores.items() if np.isfinite(v[0]["auroc"])]
            attention_eval = {
                "positive_classes": list(task.truth_positive),
                "tolerance_um": tolerance_um,
                "slides": scored,
                "auroc": _seed_block(
                    [[truth_scores[s][i]["auroc"] for s in scored] for i in range(len(task.seeds))],
                    cfg.bootstrap,
                ),
                "top_k_positive_rate": _seed_block(
                    [
                        [truth_scores[s][i]["top_k_positive_rate"] for s in scored]
                        for i in range(len(task.seeds))
                    ],
                    cfg.bootstrap,
                ),
                "base_rate": float(np.mean([truth_scores[s][0]["base_rate"] for s in scored]))
                if scored
                else float("nan"),
                "per_slide": truth_scores,
            }
        seconds = time.perf_counter() - t0
        result = {
            "task": task.name,
            "dataset": None,
            "level": "slide",
            "backbone": backbone,
            "backbone_kind": backbone_kind,
            "exposure": exposure or {},
            "protocol": "abmil",
            "classes": classes,
            "split": {
                "source": f"{task.folds}-fold cross-validation grouped by '{task.group}'",
                "n_train": None,
                "n_val": None,
                "n_test": len(slides),
                "n_groups": int(len(np.unique(g))),
            },
            "slides": slides,
            "left_out": left_out,
            "labels": y.tolist(),
            "groups": g.tolist(),
            "results": [block],
            "skipped": [],
            "oof_proba": [p.tolist() for p in probas],
            "folds": runs,
            "attention_vs_truth": attention_eval,
            "seconds": seconds,
            "seconds_per_fold": float(np.mean(fold_seconds)),
            "evaluate": cfg.part("mil"),
            "provenance": provenance("mil", params),
        }
        atomic_json(out_json, result)
        metrics = {f"abmil.{m}": v["mean"] for m, v in block["summary"].items()}
        if attention_eval:
            metrics["attention.auroc"] = attention_eval["auroc"]["mean"]
            metrics["attention.top_k_positive_rate"] = attention_eval["top_k_positive_rate"]["mean"]
        metrics["seconds_per_fold"] = result["seconds_per_fold"]
        run.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        run.log_artifact(out_json)
        for sub in ("heatmap", "montage"):
            if (out_dir / sub).is_dir():
                run.log_artifacts(out_dir / sub, sub)
        log.info(
            "%s/%s/abmil: slide AUROC %.3f, attention AUROC %s, %.1f s",
            task.name,
            backbone,
            block["summary"]["auroc"]["mean"],
            f"{attention_eval['auroc']['mean']:.3f}" if attention_eval else "n/a",
            seconds,
        )
    return result
