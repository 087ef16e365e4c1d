"""The built-in demo: synthetic slides with ground truth, a sample sheet and a crop collection.

Everything is a pure function of the :class:`DemoConfig` (and the slide index), so each slide is
its own Snakemake job and reruns give byte-identical pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from cytofm.config import DemoConfig
from cytofm.synthetic.morphology import CELL_CLASSES, render_cell, render_debris, sample_cell
from cytofm.synthetic.slide import (
    MIN_NUCLEAR_SPACING_UM,
    class_mix,
    od_to_rgb,
    render_slide_canvas,
    write_pyramidal_tiff,
)
from cytofm.synthetic.stain import LABS, SlideStain

__all__ = [
    "demo_slide_ids",
    "demo_slide_labels",
    "make_demo_crops",
    "make_demo_sheet",
    "make_demo_slide",
    "render_crop",
]

log = logging.getLogger(__name__)


def demo_slide_ids(cfg: DemoConfig) -> list[str]:
    return [f"demo_{i:03d}" for i in range(cfg.n_slides)]


def demo_slide_labels(cfg: DemoConfig) -> dict[str, int]:
    """Slide-level label ``abnormal`` (1 = holds dysplastic cells), fixed by seed and count.

    The first ``pretrain_slides`` slides feed pretraining only; the rest are the slide task's
    cohort. Each part gets its own share of abnormal slides, so the cohort is balanced however
    the slides are divided."""
    ids = demo_slide_ids(cfg)
    n_pre = cfg.pretrain_slides
    labels = {}
    for part, (start, stop) in enumerate(((0, n_pre), (n_pre, cfg.n_slides))):
        n = stop - start
        n_abnormal = int(round(n * cfg.abnormal_slide_fraction))
        order = np.random.default_rng([cfg.seed, 7, part]).permutation(n)
        abnormal = set(order[:n_abnormal].tolist())
        labels.update({ids[start + j]: int(j in abnormal) for j in range(n)})
    return labels


def make_demo_sheet(cfg: DemoConfig, slide_dir: str | Path) -> pd.DataFrame:
    """The demo's sample sheet; ``mpp`` is left empty so it is read from the files, and
    ``cell_truth`` names each slide's table of true cells (written beside the slides).

    Pretraining slides (the first ``pretrain_slides``) have split ``train`` and no
    ``abnormal`` label; the labelled cohort of the slide task has split ``test``, so
    pretraining (``pretrain.splits: [train, val]``) never reads a slide the task tests on.
    Two slides per patient, and no patient in both parts."""
    labels = demo_slide_labels(cfg)
    rows = []
    truth_dir = Path(slide_dir).parent / "ground_truth"
    for i, sid in enumerate(demo_slide_ids(cfg)):
        pretrain = i < cfg.pretrain_slides
        j = i if pretrain else i - cfg.pretrain_slides
        rows.append(
            {
                "slide_id": sid,
                "path": str(Path(slide_dir) / f"{sid}.tif"),
                "mpp": "",
                "patient_id": f"{'pre' if pretrain else 'patient'}_{j // 2:03d}",
                "split": "train" if pretrain else "test",
                "abnormal": "" if pretrain else labels[sid],
                "stain": "papanicolaou",
                "cell_truth": str(truth_dir / f"{sid}.tsv"),
            }
        )
    return pd.DataFrame(rows)


def make_demo_slide(
    cfg: DemoConfig, slide_id: str, out_slide: str | Path, out_truth: str | Path
) -> dict:
    """Render slide ``slide_id`` of the demo, write it as pyramidal TIFF plus its ground truth."""
    ids = demo_slide_ids(cfg)
    if slide_id not in ids:
        raise ValueError(f"{slide_id!r} is not a demo slide; demo slides are {ids[0]}..{ids[-1]}")
    index = ids.index(slide_id)
    abnormal = bool(demo_slide_labels(cfg)[slide_id])
    rng = np.random.default_rng([cfg.seed, 1, index])
    canvas = render_slide_canvas(
        cfg.width_px,
        cfg.height_px,
        cfg.mpp,
        class_mix(abnormal, cfg.abnormal_cell_fraction),
        cells_per_mm2=cfg.cells_per_mm2,
        cluster_prob=cfg.cluster_prob,
        debris_per_mm2=cfg.debris_per_mm2,
        rng=rng,
    )
    write_pyramidal_tiff(out_slide, canvas.rgb, cfg.mpp, quality=cfg.jpeg_quality)
    truth = canvas.cells.copy()
    truth.insert(0, "slide_id", slide_id)
    Path(out_truth).parent.mkdir(parents=True, exist_ok=True)
    truth.to_csv(out_truth, sep="\t", index=False, float_format="%.2f")
    counts = truth["class"].value_counts().to_dict()
    log.info("%s: %d cells %s, abnormal=%s", slide_id, len(truth), counts, abnormal)
    return {"slide_id": slide_id, "n_cells": len(truth), "abnormal": int(abnormal), **counts}


def render_crop(
    cls: str, crop_um: float, mpp: float, stain: SlideStain, rng: np.random.Generator
) -> np.ndarray:
    """One cell-centred crop (nuclear centroid at the centre) as a smear shows it: often a
    neighbouring cell of any class overlapping the field of view, and some debris."""
    size = int(round(crop_um / mpp))
    pad = int(round(30 / mpp))
    full = size + 2 * pad
    od = np.empty((full, full, 3), np.float32)
    od[:] = stain.background_od.astype(np.float32)
    spec = sample_cell(cls, rng)
    dx, dy = spec.centroid_um
    centre = full / 2
    if rng.random() < 0.4:  # a neighbour of any class, close enough to be partly in view
        other = sample_cell(CELL_CLASSES[int(rng.integers(len(CELL_CLASSES)))], rng)
        reach = rng.uniform(0.6 * spec.radius_um, 1.6 * spec.radius_um)
        dist = (MIN_NUCLEAR_SPACING_UM + reach) / mpp
        theta = rng.uniform(0, 2 * np.pi)
        render_cell(
            od, other, centre + dist * np.cos(theta), centre + dist * np.sin(theta), mpp, stain, rng
        )
    render_cell(od, spec, centre - dx / mpp, centre - dy / mpp, mpp, stain, rng)
    for _ in range(int(rng.poisson(1.0))):
        render_debris(od, rng.uniform(0, full), rng.uniform(0, full), mpp, stain, rng)
    rgb = od_to_rgb(od, stain, rng)
    return rgb[pad : pad + size, pad : pad + size]


def make_demo_crops(cfg: DemoConfig, out_dir: str | Path, group_size: int = 10) -> pd.DataFrame:
    """Labelled cell crops in image-folder layout (``{class}/{name}.png``) plus ``labels.csv``.

    Crops come in groups of ``group_size`` that share one stain, like cells of one slide; the
    ``group`` column lets evaluations split by group so a stain never spans train and test.
    Each group's slide was stained in one of three laboratories (``stain``: a key of
    :data:`LABS`, drawn independently of the classes), the column a leave-one-stain-out split
    and the batch-leak probe use.
    """
    out = Path(out_dir)
    rows = []
    rng = np.random.default_rng([cfg.seed, 2])
    labs = np.random.default_rng([cfg.seed, 5])
    jobs = [(cls, i) for cls in CELL_CLASSES for i in range(cfg.crops_per_class)]
    # groups are pseudo-slides: each mixes classes under one stain, as cells of a slide do
    jobs = [jobs[k] for k in rng.permutation(len(jobs))]
    stain = SlideStain.sample(rng)
    for n, (cls, i) in enumerate(tqdm(jobs, desc="demo crops", mininterval=2)):
        if n % group_size == 0:
            lab = str(labs.choice(sorted(LABS)))
            stain = SlideStain.sample(rng, lab)
            group = f"g{n // group_size:04d}"
        crop = render_crop(cls, cfg.crop_um, cfg.mpp, stain, rng)
        rel = Path(cls) / f"{cls}_{i:04d}.png"
        (out / cls).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / rel), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        rows.append({"path": str(rel), "label": cls, "group": group, "stain": lab})
    table = pd.DataFrame(rows, columns=["path", "label", "group", "stain"])
    table.to_csv(out / "labels.csv", index=False)
    return table
