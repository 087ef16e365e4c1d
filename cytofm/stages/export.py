"""Stages ``export_geojson`` and ``export_features``: a slide's objects for QuPath and its
features for TRIDENT and STAMP, each a job with its MLflow run."""

from __future__ import annotations

import logging
from pathlib import Path

from cytofm.config import ExportConfig
from cytofm.export.geojson import write_slide_geojson
from cytofm.export.hdf5 import write_features_h5
from cytofm.stages.context import JobContext

__all__ = ["run_export_features", "run_export_geojson"]

log = logging.getLogger(__name__)


def run_export_geojson(
    cells_store: str | Path,
    tiles_store: str | Path,
    out: str | Path,
    cfg: ExportConfig,
    job: JobContext | None = None,
) -> dict:
    """One slide's cells (detections), tissue (annotations) and, with ``cfg.tiles``, tiles
    as QuPath GeoJSON in level-0 pixels."""
    job = job or JobContext()
    with job.run("export_geojson", {"export": cfg.to_dict()}) as run:
        counts = write_slide_geojson(
            out, cells_store, tiles_store, tiles=cfg.tiles, cell_diameter_um=cfg.cell_diameter_um
        )
        log.info("%s: %s", out, ", ".join(f"{n} {k}" for k, n in counts.items()))
        run.log_metrics({f"n_{k}": n for k, n in counts.items()})
    return counts


def run_export_features(
    features_store: str | Path,
    instances_store: str | Path,
    out_trident: str | Path,
    out_stamp: str | Path,
    job: JobContext | None = None,
) -> dict:
    """One slide's features of one backbone as TRIDENT's and STAMP's HDF5 files."""
    job = job or JobContext()
    with job.run("export_features", {}) as run:
        written = write_features_h5(features_store, instances_store, out_trident, out_stamp)
        log.info("%s, %s: %d x %d features", out_trident, out_stamp, written["n"], written["dim"])
        run.log_metrics({"n": written["n"], "dim": written["dim"]})
    return written
