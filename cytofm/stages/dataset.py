"""Stage ``import_dataset``: a labelled collection -> ``results/datasets/{name}.zarr``."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cytofm.config import DatasetConfig
from cytofm.datasets import iter_patches, list_collection
from cytofm.errors import InputDataError
from cytofm.provenance import provenance
from cytofm.stages.context import JobContext
from cytofm.store import PatchStoreWriter, atomic_group, write_strings
from cytofm.store_attrs import store_attrs

__all__ = ["run_import"]

log = logging.getLogger(__name__)


def _splits(table, cfg: DatasetConfig) -> np.ndarray:
    """The split column (all empty when the collection has none); partly empty is an error."""
    splits = table["split"].astype(str).str.strip().to_numpy(dtype=str)
    if (splits != "").any() and (splits == "").any():
        raise InputDataError(
            f"dataset '{cfg.name}': column {cfg.split_column!r} is empty for "
            f"{int((splits == '').sum())} rows; give every row train/val/test or drop it"
        )
    return splits


def run_import(cfg: DatasetConfig, out_store: str | Path, job: JobContext | None = None) -> dict:
    """Write images, integer labels, ids (paths relative to the collection), groups and each
    image's pixel fingerprint (``pixel_hash``: what pretraining records it read)."""
    job = job or JobContext()
    with job.run("import_dataset", {"dataset": cfg.to_dict()}) as run:
        t0 = time.perf_counter()
        table = list_collection(cfg)
        classes = sorted(table["label"].unique())
        label_index = {c: i for i, c in enumerate(classes)}
        root = Path(cfg.path) if cfg.format == "folder" else Path(cfg.path).parent
        digest = hashlib.sha256()
        splits = _splits(table, cfg)
        has_splits = bool((splits != "").any())
        with atomic_group(out_store) as g:
            labels = table["label"].map(label_index).to_numpy(np.int16)
            ids = np.array([os.path.relpath(p, root) for p in table["path"]], dtype=str)
            n = _write_images(g, cfg, table, digest, labels, ids)
            _write_columns(g, cfg, table, splits if has_splits else None)
            counts = {c: int((table["label"] == c).sum()) for c in classes}
            g.attrs.update(
                store_attrs(
                    "datasets",
                    provenance=provenance(
                        "import_dataset", cfg, source_sha256=digest.hexdigest(), n_images=n
                    ),
                    name=cfg.name,
                    classes=classes,
                    class_counts=counts,
                    mpp=(cfg.patch_um / cfg.patch_px) if cfg.patch_um else None,
                    patch_px=cfg.patch_px,
                    patch_um=cfg.patch_um,
                    meta_columns=list(cfg.meta_columns),
                )
            )
        elapsed = time.perf_counter() - t0
        summary = {"n_images": n, "n_classes": len(classes), "seconds": elapsed}
        run.log_metrics(summary)
        run.log_metrics({f"count.{c}": v for c, v in counts.items()})
        log.info("%s: %d images, classes %s", cfg.name, n, counts)
    return summary


def _write_images(g, cfg: DatasetConfig, table, digest, labels, ids) -> int:
    """Every image's patch, label, group, id and pixel fingerprint; the number written."""
    columns = {
        "labels": (np.int16, ()),
        "groups": (str, ()),
        "ids": (str, ()),
        "pixel_hash": (np.uint64, ()),
    }
    writer = PatchStoreWriter(g, cfg.patch_px, cfg.chunk, columns)
    groups = table["group"].astype(str).to_numpy(dtype=str)
    patches = tqdm(
        iter_patches(table, cfg, digest), total=len(table), desc=f"import {cfg.name}", mininterval=5
    )
    for i, (patch, fingerprint) in enumerate(patches):  # buffered in whole chunks
        writer.append(
            patch[None],
            labels=labels[i : i + 1],
            groups=groups[i : i + 1],
            ids=ids[i : i + 1],
            pixel_hash=np.array([fingerprint], np.uint64),
        )
    return writer.close()


def _write_columns(g, cfg: DatasetConfig, table, splits) -> None:
    """The given split (where the CSV has one) and the meta columns (site, stain, scanner...:
    a task's hold_out and batch)."""
    if splits is not None:
        write_strings(g, "splits", splits.tolist())
    for column in cfg.meta_columns:
        write_strings(g, f"meta_{column}", table[f"meta_{column}"].tolist())
