"""Stage ``cells``: detect nuclei in a slide's tiles and store cell-centred patches."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cytofm.cells.detect import make_detector
from cytofm.cells.extract import iter_tile_cells
from cytofm.cells.stain import StainChoice, choose_stain, stain_mode
from cytofm.config import CellsConfig
from cytofm.errors import InputDataError
from cytofm.hardware import threaded_cpu_stage
from cytofm.provenance import provenance
from cytofm.report.qc import patch_gallery
from cytofm.stages.context import JobContext
from cytofm.store import PatchStoreWriter, atomic_group, open_store, write_strings
from cytofm.store_attrs import read_attrs, store_attrs
from cytofm.wsi.reader import open_slide

__all__ = ["run_cells"]

log = logging.getLogger(__name__)


def stain_sample(slide, boxes: np.ndarray, patch_mpp: float, n_tiles: int = 8,
                 max_pixels: int = 262_144) -> np.ndarray:  # fmt: skip
    """Pixels (N, 3) of up to ``n_tiles`` foreground tiles spread over the slide, read at the
    resolution the detector works at: what the stain choice is made from."""
    if len(boxes) == 0:
        return np.zeros((0, 3), np.uint8)
    f = patch_mpp / slide.mpp
    picks = np.unique(np.linspace(0, len(boxes) - 1, min(n_tiles, len(boxes))).round().astype(int))
    pixels = []
    w0, h0 = slide.dimensions
    for x0, y0, x1, y1 in np.asarray(boxes)[picks]:
        # the slide's own pixels: a tile may reach past the edge of a small image
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w0), min(y1, h0)
        if x1 <= x0 or y1 <= y0:
            continue
        size = (max(int(np.ceil((x1 - x0) / f)), 1), max(int(np.ceil((y1 - y0) / f)), 1))
        pixels.append(slide.read(x0, y0, size, patch_mpp).reshape(-1, 3))
    out = np.concatenate(pixels) if pixels else np.zeros((0, 3), np.uint8)
    if len(out) > max_pixels:  # evenly spaced, so the same slide gives the same sample
        out = out[np.linspace(0, len(out) - 1, max_pixels).astype(np.int64)]
    return out


def run_cells(
    slide_path: str | Path,
    slide_id: str,
    mpp: float | None,
    tiles_store: str | Path,
    cfg: CellsConfig,
    out_store: str | Path,
    out_gallery: str | Path,
    job: JobContext | None = None,
    gallery_size: int = 48,
    sheet_stain: str | None = None,
    out_summary: str | Path | None = None,
    threads: int = 1,
) -> dict:
    """Extract cells of one slide into ``out_store`` (zarr) and a patch gallery PNG;
    ``sheet_stain`` is the slide's ``stain`` in the sample sheet (else ``cfg.stain``);
    ``threads`` blocks of tiles are read and searched at once (the rule's ``threads``).

    A slide with foreground but no nucleus found (an acellular smear field) gets a store with
    zero cells and a warning, in the log, the store's provenance and ``out_summary`` (the QC
    JSON the report's detection table is made from), rather than failing its job.
    """
    job = job or JobContext()
    boxes, background, tile_prov, planes = _read_tiles(tiles_store)
    with (
        threaded_cpu_stage(),
        job.run("cells", {"cells": cfg.to_dict(), "slide_id": slide_id}) as run,
    ):
        t0 = time.perf_counter()
        rng = np.random.default_rng([job.seed, 3])
        with (
            open_slide(slide_path, slide_id, mpp, cfg.backend) as slide,
            atomic_group(out_store) as g,
        ):
            stain = _slide_stain(slide, slide_id, boxes, cfg, sheet_stain)
            detector = make_detector(cfg, background, stain)
            n, pixels, reservoir = _extract_cells(
                g, slide, slide_id, boxes, cfg, detector, rng, gallery_size, threads, planes
            )
            warning = _no_cells_warning(slide, slide_id, len(boxes), cfg, stain) if n == 0 else ""
            if warning:  # a smear field without a nucleated cell is normal: recorded, not fatal
                log.warning(warning)
            write_strings(g, "ids", [f"{slide_id}:{i}" for i in range(n)])
            fields = _specimen_fields(g, slide, n)  # {} for a slide
            elapsed, (w, h) = time.perf_counter() - t0, slide.dimensions
            g.attrs.update(_store_attrs(slide, slide_id, cfg, stain, tile_prov, n, warning))
        patch_gallery(np.asarray(reservoir), out_gallery, stain=stain, n_cells=n)
        summary = _cells_metrics(n, boxes, slide.mpp, pixels, w * h, elapsed)
        log.info("%s: %d cells from %d tiles in %.1f s", slide_id, n, len(boxes), elapsed)
        run.log_metrics(summary)
        run.log_artifact(out_gallery, "qc")
        if warning:
            run.set_tags({"cells.warning": warning[:500]})
        summary = {"slide_id": slide_id, **summary, "detector": cfg.detector}
        summary.update(stain=stain.to_dict(), warning=warning)
        summary.update(fields)
        _write_summary(summary, out_summary, run)
    return summary


def _read_tiles(tiles_store) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray | None]:
    """The tile store's boxes, glass colour, provenance and (z-stacks) chosen planes."""
    tiles = open_store(tiles_store)
    attrs = read_attrs(tiles, "tiles", str(tiles_store))
    planes = tiles["plane"][:] if "plane" in tiles else None
    return tiles["boxes"][:], np.asarray(attrs.background_rgb, np.float32), attrs.provenance, planes


def _write_summary(summary: dict, out_summary, run) -> None:
    """The QC JSON the report's detection table is made from, logged with the run."""
    if out_summary is not None:
        Path(out_summary).parent.mkdir(parents=True, exist_ok=True)
        Path(out_summary).write_text(json.dumps(summary, indent=1) + "\n")
        run.log_artifact(out_summary, "qc")


def _specimen_fields(g, slide, n: int) -> dict:
    """A specimen of fields: each cell's field index and field-local coordinates, and per
    field counts, the fields left out and those without cells (listed in the log and QC)."""
    if not hasattr(slide, "field_of"):
        return {}
    coords = np.asarray(g["coords"][:]) if n else np.zeros((0, 2), np.int64)
    index, local = slide.field_of(coords)
    g.create_array("field", shape=(n,), dtype="int32")[:] = index.astype(np.int32)
    g.create_array("field_coords", shape=(n, 2), dtype="int64")[:] = np.round(local)
    names = [f["name"] for f in slide.fields]
    counts = np.bincount(index[index >= 0], minlength=len(names))
    empty = [name for name, c in zip(names, counts, strict=True) if c == 0]
    for bad in slide.bad_fields:
        log.warning("%s: field %s left out: %s", slide.slide_id, bad["name"], bad["reason"])
    if empty:
        log.warning("%s: no cells in field(s) %s", slide.slide_id, ", ".join(empty))
    return {
        "fields": [{**f, "n_cells": int(c)} for f, c in zip(slide.fields, counts, strict=True)],
        "bad_fields": slide.bad_fields,
        "fields_without_cells": empty,
    }


def _cells_metrics(n, boxes, slide_mpp, pixels_read, slide_pixels, elapsed) -> dict:
    """Counts, density over the foreground tiles and read/slide throughput of one job."""
    tile_mm2 = len(boxes) * ((boxes[0, 2] - boxes[0, 0]) * slide_mpp / 1000) ** 2 if n else 1.0
    return {
        "n_cells": n,
        "n_tiles": len(boxes),
        "seconds": elapsed,
        "cells_per_mm2_foreground_tiles": n / max(tile_mm2, 1e-12),
        "read_mpx_per_s": pixels_read / 1e6 / max(elapsed, 1e-9),
        "slide_mpx_per_s": slide_pixels / 1e6 / max(elapsed, 1e-9),
    }


def _slide_stain(slide, slide_id: str, boxes, cfg: CellsConfig, sheet_stain) -> StainChoice:
    """The chromatin map of this slide: from the sheet or config, estimated when asked."""
    try:
        mode = stain_mode(sheet_stain, cfg.stain)
    except ValueError as e:
        raise InputDataError(f"slide '{slide_id}': {e}") from None
    why = f"sample sheet stain {sheet_stain!r}" if sheet_stain else f"cells.stain: {mode}"
    sample = stain_sample(slide, boxes, cfg.patch_mpp) if mode == "nuclear" else None
    stain = (
        choose_stain(sample, mode, why)
        if sample is None or len(sample)
        else StainChoice(reason=f"{why}; no foreground tiles to estimate stains from")
    )
    log.info("%s: chromatin map %s: %s", slide_id, stain.mode, stain.reason)
    return stain


def _extract_cells(
    g, slide, slide_id, boxes, cfg, detector, rng, gallery_size, threads=1, planes=None
):
    """Detect and cut every tile's cells into the store (on a z-stack, with each cell's focal
    plane); returns (cells, pixels read, a reservoir sample of patches for the gallery, in
    bounded memory)."""
    columns = {"coords": (np.int64, (2,)), "scores": (np.float32, ()), "tile_index": (np.int32, ())}
    if planes is not None:
        columns["plane"] = (np.int16, ())
    writer = PatchStoreWriter(g, cfg.patch_px, cfg.chunk, columns)
    pixels, seen = 0, 0
    reservoir: list[np.ndarray] = []
    tiles = iter_tile_cells(
        slide,
        boxes,
        cfg.patch_px,
        cfg.patch_mpp,
        detector,
        threads=threads,
        planes=planes,
        image_edge=cfg.image_edge,
    )
    for cells in tqdm(tiles, total=len(boxes), desc=f"cells {slide_id}", mininterval=5):
        pixels += cells.pixels_read
        n_new = len(cells.images)
        extra = {} if planes is None else {"plane": np.full(n_new, cells.plane, np.int16)}
        writer.append(
            cells.images,
            coords=np.round(cells.coords).astype(np.int64),
            scores=cells.scores,
            tile_index=np.full(n_new, cells.tile_index, np.int32),
            **extra,
        )
        for img in cells.images:
            seen += 1
            if len(reservoir) < gallery_size:
                reservoir.append(img)
            elif (j := int(rng.integers(seen))) < gallery_size:
                reservoir[j] = img
    return writer.close(), pixels, reservoir


def _no_cells_warning(slide, slide_id: str, n_tiles: int, cfg: CellsConfig, stain) -> str:
    return (
        f"slide '{slide_id}': no nuclei found in its {n_tiles} foreground tiles "
        f"(cells.detector={cfg.detector!r}, chromatin map {stain.mode}, "
        f"threshold={cfg.threshold}, min_darkness={cfg.min_darkness}, slide mpp "
        f"{slide.mpp:g} from {slide.mpp_source}); it is kept with zero cells and "
        "steps that need cells leave it out. If it should have cells, check the QC "
        "image, the slide's mpp and stain (cells.stain or the sheet's stain column), "
        "or lower cells.threshold or cells.min_darkness."
    )


def _store_attrs(slide, slide_id: str, cfg: CellsConfig, stain, tile_prov, n, warning) -> dict:
    record = provenance(
        "cells",
        cfg,
        slide=slide.info(),
        slide_sha256=tile_prov.get("slide_sha256"),
        tiles_config_hash=tile_prov.get("config_hash"),
        n_cells=n,
        stain=stain.to_dict(),
        warning=warning or None,
    )
    return store_attrs(
        "cells",
        provenance=record,
        slide_id=slide_id,
        slide_mpp=slide.mpp,
        mpp=cfg.patch_mpp,
        patch_um=cfg.patch_um,
        patch_px=cfg.patch_px,
        detector=cfg.detector,
        stain=stain.to_dict(),
        fields=getattr(slide, "fields", None),
        bad_fields=getattr(slide, "bad_fields", None),
    )
