"""Slide-level attention MIL, cross-validated: the cohort's bags, patient-grouped folds over
seeds, out-of-fold predictions and attention, what the attention's per-slide pictures show and its
score against true cells, and the result JSON. The ``mil`` stage strings these together.

For every seed, patient-grouped stratified folds give each slide one out-of-fold prediction (an
inner grouped split of the training slides stops training early); the seeds' out-of-fold
probabilities are scored and summarised exactly like the patch-level protocols. Out-of-fold
attention of every seed is kept per instance; the first seed's is what the pictures show, over
the slide thumbnail and as a montage of the top-k cells (:func:`slide_figures` gives what to
draw; the stage draws it). When a slide has a table of true cell classes, attention is
scored against it: AUROC of attention for the ``truth_positive`` classes vs. all others.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from cytofm.config import EvalConfig, SlideTaskConfig
from cytofm.errors import InputDataError
from cytofm.eval.calibration import apply_temperature, fit_temperature
from cytofm.eval.metrics import classification_metrics, interval, summarise
from cytofm.eval.mil import check_bags, grouped_folds, predict_mil, train_mil
from cytofm.store import atomic_group, open_store
from cytofm.store_attrs import store_attrs

__all__ = [
    "Heatmap",
    "MilCV",
    "MilCohort",
    "Montage",
    "SlideFigures",
    "attention_summary",
    "attention_truth_scores",
    "cross_validate",
    "load_cohort",
    "mil_result",
    "result_block",
    "slide_figures",
    "slide_thumbnail",
    "write_attention",
]

log = logging.getLogger(__name__)


def _inner_split(labels, groups, train, seed):
    """Hold out about a quarter of the training slides (whole patients) for early stopping;
    none when there are too few for a stratified quarter (under 4 patients, or no class with
    4 slides): the model then trains for the configured epochs."""
    n_groups = len(np.unique(groups[train]))
    if n_groups < 4 or np.bincount(np.unique(labels[train], return_inverse=True)[1]).max() < 4:
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


def slide_thumbnail(path, slide_id, mpp, thumb_mpp):
    """(thumbnail at ``thumb_mpp`` or the slide's own resolution if coarser, level-0 px per
    thumbnail px, slide mpp)."""
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


@dataclasses.dataclass
class MilCohort:
    """The slides of a slide task with cells, in slide-id order, and their bags."""

    rows: list[Mapping[str, Any]]
    slides: list[str]
    feat_rows: list[np.ndarray]  # per slide: the instance store's row of each bag entry
    bags: list[np.ndarray]
    y: np.ndarray
    classes: list[str]
    groups: np.ndarray
    left_out: list[dict]  # slides without cells, with the reason


def load_cohort(task: SlideTaskConfig, cohort: Sequence[Mapping[str, Any]]) -> MilCohort:
    """Read every slide's bag; a slide where no cell was found is left out, and listed."""
    rows = sorted(cohort, key=lambda r: str(r["slide_id"]))
    slides = [str(r["slide_id"]) for r in rows]
    if len(set(slides)) != len(slides):
        raise InputDataError(f"slide task '{task.name}': duplicated slide ids in the cohort")
    loaded = [_read_bag(r["features"], s) for r, s in zip(rows, slides, strict=True)]
    left_out = [
        {"slide_id": s, "label": str(r["label"]), "reason": "no cells (none found or kept)"}
        for r, s, (f, _) in zip(rows, slides, loaded, strict=True)
        if len(f) == 0
    ]
    if left_out:
        log.warning(
            "slide task '%s': %d slide(s) without cells left out: %s",
            *(task.name, len(left_out), ", ".join(x["slide_id"] for x in left_out)),
        )
        keep = [i for i, (f, _) in enumerate(loaded) if len(f)]
        rows, slides = [rows[i] for i in keep], [slides[i] for i in keep]
        loaded = [loaded[i] for i in keep]
        if not rows:
            raise InputDataError(f"slide task '{task.name}': no slide of the cohort has cells")
    y, classes = _class_index([r["label"] for r in rows], task.name)
    g = np.array([str(r.get("group") or "") or s for r, s in zip(rows, slides, strict=True)])
    bags = [f for _, f in check_bags([(s, f) for s, (f, _) in zip(slides, loaded, strict=True)])]
    return MilCohort(rows, slides, [r for _, r in loaded], bags, y, classes, g, left_out)


@dataclasses.dataclass
class MilCV:
    """Out-of-fold results of every seed."""

    probas: list[np.ndarray]  # per seed: (slides, classes)
    attention: dict[str, list[np.ndarray]]  # slide -> per seed: attention over its bag
    folds: list[dict]  # per seed and fold: slides, best epoch, seconds, temperature
    fold_seconds: list[float]
    # per seed: the out-of-fold probabilities after each fold's temperature scaling, fitted on
    # its inner validation slides (1.0 for a fold without them)
    calibrated: list[np.ndarray] = dataclasses.field(default_factory=list)
    temperatures: list[list[float]] = dataclasses.field(default_factory=list)

    def predictions(self) -> dict:
        """The out-of-fold probabilities, raw and scaled, as ``save_predictions`` takes them."""
        return {
            "blocks": {"all": self.probas},
            "calibrated": {"all": self.calibrated},
            "temperatures": {"all": self.temperatures},
        }


def cross_validate(co: MilCohort, task: SlideTaskConfig, cfg: EvalConfig, desc: str) -> MilCV:
    """Patient-grouped folds per seed, each trained with early stopping on an inner split."""
    cv = MilCV([], {s: [] for s in co.slides}, [], [])
    bar = tqdm(total=len(task.seeds) * task.folds, desc=desc, mininterval=5)
    for seed in (int(s) for s in task.seeds):
        p = np.zeros((len(co.slides), len(co.classes)))
        scaled, temps = np.zeros_like(p), []
        for k, (train, test) in enumerate(grouped_folds(co.y, co.groups, task.folds, seed)):
            tf = time.perf_counter()
            tr, va = _inner_split(co.y, co.groups, train, seed)
            model, hist = train_mil(co.bags, co.y, tr, va, len(co.classes), cfg.mil, seed=seed)
            p[test], attn = predict_mil(model, co.bags, test, cfg.mil.batch_bags)
            t = 1.0
            if len(va):
                p_val = predict_mil(model, co.bags, va, cfg.mil.batch_bags)[0]
                t = fit_temperature(co.y[va], p_val)
            scaled[test] = apply_temperature(p[test], t)
            temps.append(t)
            for i, a in zip(test, attn, strict=True):
                cv.attention[co.slides[i]].append(a)
            cv.fold_seconds.append(time.perf_counter() - tf)
            cv.folds.append(
                {
                    "seed": seed,
                    "fold": k,
                    "train_slides": [co.slides[i] for i in tr],
                    "val_slides": [co.slides[i] for i in va],
                    "test_slides": [co.slides[i] for i in test],
                    "best_epoch": hist["best_epoch"],
                    "epochs": hist["epochs"],
                    "temperature": t,
                    "seconds": cv.fold_seconds[-1],
                }
            )
            bar.update(1)
        cv.probas.append(p)
        cv.calibrated.append(scaled)
        cv.temperatures.append(temps)
    bar.close()
    return cv


def result_block(co: MilCohort, cv: MilCV, task: SlideTaskConfig, n_boot: int) -> dict:
    """The seeds' out-of-fold predictions scored as the patch-level protocols score theirs."""
    per_seed = [classification_metrics(co.y, p, co.classes) for p in cv.probas]
    groups = co.groups if len(set(co.groups)) > 1 else None
    return {
        "shots": None,
        "seed_independent": False,
        "summary": summarise(co.y, cv.probas, n_boot=n_boot, seed=0, groups=groups),
        "runs": [{"seed": int(s), "test": m} for s, m in zip(task.seeds, per_seed, strict=True)],
    }


def write_attention(path, co: MilCohort, cv: MilCV, backbone: str, task: SlideTaskConfig):
    """Per-instance attention beside the features: (seeds, n) per slide, rows of the store."""
    with atomic_group(path) as grp:
        for s, feat_rows in zip(co.slides, co.feat_rows, strict=True):
            sub = grp.create_group(s)
            a = np.stack(cv.attention[s]).astype(np.float32)
            sub.create_array("attention", shape=a.shape, dtype="float32")[:] = a
            sub.create_array("rows", shape=feat_rows.shape, dtype="int64")[:] = feat_rows
        grp.attrs.update(
            store_attrs(
                "attention", backbone=backbone, task=task.name, seeds=[int(s) for s in task.seeds]
            )
        )


@dataclasses.dataclass
class Montage:
    """The top-k cells of a slide to draw as one PNG: their ``images`` (in store order) and
    ``attention``; drawn most attended first, at most ``k``."""

    images: np.ndarray
    attention: np.ndarray
    k: int
    out_png: Path


@dataclasses.dataclass
class Heatmap:
    """A slide's attention to draw over its thumbnail as one PNG: cells at level-0 centres
    ``coords_px`` (``downsample``: level-0 px per thumbnail px), optionally circling
    ``highlight_px``. Without a ``thumbnail`` (no slide file, no cell) the PNG is a note with
    the ``title``."""

    thumbnail: np.ndarray | None
    coords_px: np.ndarray
    attention: np.ndarray
    downsample: float
    out_png: Path
    title: str
    highlight_px: np.ndarray | None = None
    highlight_label: str = "true abnormal cell"


@dataclasses.dataclass
class SlideFigures:
    """One slide's pictures (the heatmap only when its file is known) and, where it has a
    table of true cells, the attention's score against it (per seed)."""

    slide: str
    montage: Montage
    heatmap: Heatmap | None
    truth: list[dict] | None


def slide_figures(
    co: MilCohort,
    cv: MilCV,
    task: SlideTaskConfig,
    top_k: int,
    out_dir: Path,
    tolerance_um: float,
    thumbnail_mpp: float,
) -> Iterator[SlideFigures]:
    """Per slide, one at a time (a thumbnail and k cell images in memory): the top-k montage
    (``out_dir/montage/<slide>.png``) and the first seed's attention over the thumbnail
    (``out_dir/heatmap/<slide>.png``) to draw, and the attention's score against true cells."""
    for i, (r, s, feat_rows) in enumerate(zip(co.rows, co.slides, co.feat_rows, strict=True)):
        store = open_store(r["instances"])
        coords = np.asarray(store["coords"][:])[feat_rows]
        first = cv.attention[s][0]
        # read only the top-k patches, in store order, to be drawn most attended first
        top = np.sort(np.argsort(-first, kind="stable")[:top_k])
        order = np.argsort(feat_rows[top])
        images = np.asarray(store["images"].get_orthogonal_selection((feat_rows[top][order],)))
        montage = Montage(images, first[top][order], top_k, out_dir / "montage" / f"{s}.png")
        slide_mpp = float(store.attrs.get("slide_mpp") or 0) or None
        table = None
        if r.get("truth") and task.truth_positive:
            table = pd.read_csv(r["truth"], sep=None, engine="python")
        heatmap = None
        if r.get("path"):
            thumb, down, slide_mpp = slide_thumbnail(r["path"], s, r.get("mpp"), thumbnail_mpp)
            label = co.classes[co.y[i]]
            heatmap = Heatmap(
                thumb,
                coords,
                first,
                down,
                out_dir / "heatmap" / f"{s}.png",
                f"{s}  label {label}  P(label)={cv.probas[0][i, co.y[i]]:.2f}",
                highlight_px=_positive_cells(table, task.truth_positive),
                highlight_label=f"true {'/'.join(task.truth_positive)} cell",
            )
        truth = None
        if table is not None:
            if slide_mpp is None:
                raise InputDataError(f"slide '{s}': no mpp known to match cells to truth")
            truth = [
                attention_truth_scores(
                    a, coords, table, task.truth_positive, tolerance_um / slide_mpp, top_k
                )
                for a in cv.attention[s]
            ]
        yield SlideFigures(s, montage, heatmap, truth)


def _positive_cells(table: pd.DataFrame | None, positive: Sequence[str]) -> np.ndarray | None:
    if table is None or not {"x", "y", "class"} <= set(table.columns):
        return None
    keep = table["class"].astype(str).isin([str(c) for c in positive])
    return table.loc[keep, ["x", "y"]].to_numpy()


def attention_summary(
    truth_scores: dict[str, list[dict]], task: SlideTaskConfig, n_boot: int, tolerance_um: float
) -> dict | None:
    """Attention-vs-truth AUROC and top-k positive rate over the scored slides, with CIs."""
    if not truth_scores:
        return None
    scored = [s for s, v in truth_scores.items() if np.isfinite(v[0]["auroc"])]
    seeds = range(len(task.seeds))

    def over_slides(key: str) -> dict:
        return _seed_block([[truth_scores[s][i][key] for s in scored] for i in seeds], n_boot)

    base = [truth_scores[s][0]["base_rate"] for s in scored]
    return {
        "positive_classes": list(task.truth_positive),
        "tolerance_um": tolerance_um,
        "slides": scored,
        "auroc": over_slides("auroc"),
        "top_k_positive_rate": over_slides("top_k_positive_rate"),
        "base_rate": float(np.mean(base)) if scored else float("nan"),
        "per_slide": truth_scores,
    }


def mil_result(co: MilCohort, cv: MilCV, task: SlideTaskConfig, block: dict, **extra) -> dict:
    """The result JSON, in the layout of the patch-level protocols' (``extra``: backbone,
    kind, exposure, attention evaluation, timing, settings, provenance)."""
    return {
        "task": task.name,
        "dataset": None,
        "level": "slide",
        "backbone": extra.pop("backbone"),
        "backbone_kind": extra.pop("backbone_kind"),
        "exposure": extra.pop("exposure") or {},
        "protocol": "abmil",
        "classes": co.classes,
        "split": {
            "source": f"{task.folds}-fold cross-validation grouped by '{task.group}'",
            "n_train": None,
            "n_val": None,
            "n_test": len(co.slides),
            "n_groups": int(len(np.unique(co.groups))),
        },
        "slides": co.slides,
        "left_out": co.left_out,
        "labels": co.y.tolist(),
        "groups": co.groups.tolist(),
        "results": [block],
        "skipped": [],
        "oof_proba": [p.tolist() for p in cv.probas],
        "folds": cv.folds,
        "attention_vs_truth": extra.pop("attention_vs_truth"),
        "seconds": extra.pop("seconds"),
        "seconds_per_fold": float(np.mean(cv.fold_seconds)),
        **extra,
    }
