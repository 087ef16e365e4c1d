"""Slide-level attention MIL as an evaluation protocol (stage function; rule wiring follows).

Bags are the cached cell features of each slide; labels and patient groups come from the
sample sheet. For every seed, patient-grouped stratified folds give each slide one out-of-fold
prediction (an inner grouped split of the training slides stops training early); the seeds'
out-of-fold probabilities are scored and summarised exactly like the patch-level protocols.
Out-of-fold attention of the first seed is stored per cell, drawn over the slide thumbnail and
as a montage of the top-k cells.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytofm.errors import InputDataError
from cytofm.eval.metrics import classification_metrics, summarise
from cytofm.eval.mil import grouped_folds, pad_bags, train_mil
from cytofm.eval.mil_plots import attention_heatmap, top_cells_montage
from cytofm.provenance import provenance
from cytofm.stages.context import JobContext
from cytofm.store import atomic_group, open_store

__all__ = ["run_mil"]

log = logging.getLogger(__name__)


def _inner_split(labels, groups, train, seed):
    """Hold out about a quarter of the training slides (whole patients) for early stopping."""
    n_groups = len(np.unique(groups[train]))
    if n_groups < 4:
        return train, train[:0]
    inner = grouped_folds(labels[train], groups[train], 4, seed)[0]
    return train[inner[0]], train[inner[1]]


def run_mil(
    features: Mapping[str, str | Path],
    labels: Mapping[str, Any],
    groups: Mapping[str, str],
    out_dir: str | Path,
    *,
    cells: Mapping[str, str | Path] | None = None,
    thumbnails: Mapping[str, tuple[np.ndarray, float]] | None = None,
    folds: int = 3,
    seeds: tuple[int, ...] = (0, 1, 2),
    top_k: int = 16,
    bootstrap: int = 1000,
    train_args: Mapping[str, Any] | None = None,
    backbone: str = "",
    job: JobContext | None = None,
) -> dict[str, Any]:
    """``features``/``cells``: slide -> feature store / cell store; ``labels``: slide -> class;
    ``thumbnails``: slide -> (RGB thumbnail, level-0 px per thumbnail px)."""
    job = job or JobContext()
    slides = sorted(features)
    missing = [s for s in slides if s not in labels or labels[s] in ("", None)]
    if missing:
        raise InputDataError(f"slides {missing} have no slide label; fill the sheet's label column")
    classes = sorted({str(labels[s]) for s in slides})
    if len(classes) < 2:
        raise InputDataError(f"slide labels hold one class only ({classes}); MIL needs two")
    y = np.array([classes.index(str(labels[s])) for s in slides])
    g = np.array([str(groups.get(s) or s) for s in slides])
    bags = [(s, np.asarray(open_store(features[s])["features"][:], np.float32)) for s in slides]
    x, mask, _ = pad_bags(bags)
    out = Path(out_dir)
    params = {
        "folds": folds,
        "seeds": list(seeds),
        "train": dict(train_args or {}),
        "backbone": backbone,
        "n_slides": len(slides),
    }
    with job.run("mil", params) as run:
        t0 = time.perf_counter()
        probas, runs, attention = [], [], {}
        for seed in seeds:
            p = np.zeros((len(slides), len(classes)))
            for k, (train, test) in enumerate(grouped_folds(y, g, folds, seed)):
                tr, va = _inner_split(y, g, train, seed)
                model, hist = train_mil(
                    x, mask, y, tr, va, len(classes), seed=seed, **dict(train_args or {})
                )
                with torch.no_grad():
                    logits, attn = model(x[test], mask[test])
                p[test] = torch.softmax(logits, 1).numpy()
                runs.append(
                    {
                        "seed": int(seed),
                        "fold": k,
                        "test_slides": [slides[i] for i in test],
                        "best_epoch": hist["best_epoch"],
                    }
                )
                if seed == seeds[0]:
                    for j, i in enumerate(test):
                        attention[slides[i]] = attn[j, : int(mask[i].sum())].numpy()
            probas.append(p)
        per_seed = [classification_metrics(y, p, classes) for p in probas]
        result = {
            "protocol": "mil",
            "backbone": backbone,
            "classes": classes,
            "slides": slides,
            "labels": y.tolist(),
            "summary": summarise(y, probas, n_boot=bootstrap, seed=0),
            "per_seed": per_seed,
            "oof_proba": [p.tolist() for p in probas],
            "runs": runs,
            "seconds": time.perf_counter() - t0,
            "provenance": provenance("mil", params),
        }
        with atomic_group(out / "attention.zarr") as grp:
            for s, a in attention.items():
                grp.create_array(s, shape=a.shape, dtype="float32")[:] = a
            grp.attrs["backbone"] = backbone
        for s, a in attention.items():
            if cells is not None and s in cells:
                store = open_store(cells[s])
                top_cells_montage(store["images"][:], a, top_k, out / "montage" / f"{s}.png")
                if thumbnails and s in thumbnails:
                    thumb, down = thumbnails[s]
                    attention_heatmap(
                        thumb,
                        store["coords"][:],
                        a,
                        down,
                        out / "heatmap" / f"{s}.png",
                        f"{s} ({classes[y[slides.index(s)]]})",
                    )
        (out / "result.json").write_text(json.dumps(result, indent=1))
        run.log_metrics(
            {f"mil.{m}": v["mean"] for m, v in result["summary"].items() if np.isfinite(v["mean"])}
        )
        run.log_artifact(out / "result.json")
    return result
