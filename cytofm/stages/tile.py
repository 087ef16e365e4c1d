"""Stage ``tile``: foreground mask, tile grid and QC image of one slide."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cytofm.config import TilingConfig
from cytofm.errors import InputDataError
from cytofm.hardware import threaded_cpu_stage
from cytofm.provenance import provenance
from cytofm.report.qc import draw_qc, plane_colours
from cytofm.stages.context import JobContext
from cytofm.store import atomic_group
from cytofm.store_attrs import store_attrs
from cytofm.wsi.fields import slide_sha256
from cytofm.wsi.mask import estimate_background, foreground_mask, read_thumbnail
from cytofm.wsi.reader import open_slide
from cytofm.wsi.tiling import tile_grid
from cytofm.wsi.zstack import choose_planes

__all__ = ["run_tile"]

log = logging.getLogger(__name__)

QC_SIDE_PX = 1536  # longest side of the QC image


def run_tile(
    slide_path: str | Path,
    slide_id: str,
    mpp: float | None,
    cfg: TilingConfig,
    out_store: str | Path,
    out_qc: str | Path,
    job: JobContext | None = None,
    source: str | None = None,
    threads: int = 1,
) -> dict:
    """Tile one slide: ``out_store`` (zarr: boxes, centres, mask, optional images) + QC PNG.

    ``slide_path`` is the file read (for a URL in the sheet, the copy Snakemake fetched);
    ``source`` is what the sheet names, logged as the slide's path when paths are logged.
    Thumbnails are read ``threads`` blocks at a time.
    """
    job = job or JobContext()
    params = {"tiling": cfg.to_dict(), "slide_id": slide_id}
    if job.tracking.log_slide_paths:
        params["slide_path"] = str(source or slide_path)
    with threaded_cpu_stage(), job.run("tile", params) as run:
        t0 = time.perf_counter()
        with (
            open_slide(slide_path, slide_id, mpp, cfg.backend) as slide,
            ThreadPoolExecutor(2, thread_name_prefix="tile-side") as side,
        ):
            # With threads to spare, the file's checksum (seconds for a large scan; hashlib
            # releases the GIL), the QC view's read and then its drawing run beside the mask
            # and the store
            spare, view_mpp = threads > 1, _qc_view_mpp(slide, cfg)
            digest = side.submit(slide_sha256, slide_path) if spare else None
            finer = spare and view_mpp != cfg.mask_mpp
            view = side.submit(read_thumbnail, slide, view_mpp) if finer else None
            thumb = read_thumbnail(slide, cfg.mask_mpp, threads=threads)
            background, mask, grid = _find_tiles(slide, slide_id, cfg, thumb)
            focus = choose_planes(slide, grid.boxes, cfg.focus_mpp, threads)  # z-stacks only
            qc_args = (slide, slide_id, cfg, thumb, mask, grid, out_qc, threads, view, focus[0])
            qc = side.submit(_draw_tile_qc, *qc_args) if spare else None
            sha = digest.result() if digest else slide_sha256(slide_path)
            record = _record(slide, cfg, sha, background, grid, mask)
            run.set_tags({"cytofm.slide_sha256": record["slide_sha256"]})
            if job.tracking.log_slide_metadata:  # opt-in: may hold personal data
                run.log_dict(slide.properties(), "slide_properties.json")
            _write_tile_store(
                out_store, slide, slide_id, cfg, grid, mask, background, record, focus
            )
            if qc is None:
                _draw_tile_qc(*qc_args)
            else:
                qc.result()
            summary = _summary(grid, mask, slide, time.perf_counter() - t0)
        run.log_metrics(summary)
        run.log_artifact(out_qc, "qc")
    return summary


def _record(slide, cfg: TilingConfig, sha: str, background, grid, mask) -> dict:
    """The tile store's provenance."""
    return provenance(
        "tile",
        cfg,
        slide=slide.info(),
        slide_sha256=sha,
        background_rgb=background.tolist(),
        n_tiles=len(grid),
        n_tiles_total=grid.n_total,
        foreground_fraction=float(mask.mean()),
    )


def _summary(grid, mask, slide, elapsed: float) -> dict:
    w, h = slide.dimensions
    return {
        "n_tiles": len(grid),
        "n_tiles_total": grid.n_total,
        "foreground_fraction": float(mask.mean()),
        "slide_megapixels": w * h / 1e6,
        "seconds": elapsed,
        "slide_mpx_per_s": w * h / 1e6 / max(elapsed, 1e-9),
    }


def _qc_view_mpp(slide, cfg: TilingConfig) -> float:
    """The QC image's resolution: the mask's, or finer up to QC_SIDE_PX on the longest side;
    a pyramid level within 25% of that is taken as it is stored (a read without resampling)."""
    w, h = slide.dimensions
    want = min(cfg.mask_mpp, max(slide.mpp, max(w, h) * slide.mpp / QC_SIDE_PX))
    levels = [slide.mpp * d for d in slide.level_downsamples]
    near = [m for m in levels if want / 1.25 <= m <= want * 1.25 and m <= cfg.mask_mpp]
    return min(near, key=lambda m: abs(np.log(m / want))) if near else want


def _find_tiles(slide, slide_id: str, cfg: TilingConfig, thumb: np.ndarray):
    """Glass colour, foreground mask and the tile grid; no foreground is an error."""
    background = estimate_background(thumb)
    mask = foreground_mask(
        thumb,
        cfg.mask_mpp,
        background,
        od_threshold=cfg.od_threshold,
        min_object_um2=cfg.min_object_um2,
        dilate_um=cfg.dilate_um,
    )
    grid = tile_grid(slide, mask, cfg.mask_mpp, cfg.tile_px, cfg.mpp, cfg.min_foreground)
    if len(grid) == 0:
        raise InputDataError(
            f"slide '{slide_id}': no foreground found (tissue covers "
            f"{100 * mask.mean():.2f}% of the thumbnail, no tile reaches "
            f"tiling.min_foreground={cfg.min_foreground}). The slide looks like empty "
            f"glass or its stain is fainter than tiling.od_threshold={cfg.od_threshold}: "
            "check the scan, lower tiling.od_threshold, or remove the slide from the "
            "sample sheet."
        )
    log.info(
        "%s: %d of %d tiles hold foreground (%.1f%% of the slide)",
        *(slide_id, len(grid), grid.n_total, 100 * mask.mean()),
    )
    return background, mask, grid


def _write_tile_store(out_store, slide, slide_id, cfg, grid, mask, background, record, focus):
    with atomic_group(out_store) as g:
        g.create_array("boxes", data=grid.boxes, chunks=(max(len(grid), 1), 4))
        g.create_array("coords", data=grid.centres, chunks=(max(len(grid), 1), 2))
        g.create_array("foreground", data=grid.foreground, chunks=(max(len(grid), 1),))
        g.create_array("mask", data=mask.astype(np.uint8))
        if slide.planes > 1:  # a z-stack: each tile's sharpest plane and every plane's measure
            g.create_array("plane", data=focus[0], chunks=(max(len(grid), 1),))
            g.create_array("focus", data=focus[1], chunks=(max(len(grid), 1), slide.planes))
        if cfg.save_images:
            images = g.create_array(
                "images",
                shape=(len(grid), cfg.tile_px, cfg.tile_px, 3),
                chunks=(1, cfg.tile_px, cfg.tile_px, 3),
                dtype="uint8",
            )
            for i, (x0, y0, _, _) in enumerate(
                tqdm(grid.boxes, desc=f"tiles {slide_id}", mininterval=5)
            ):
                images[i] = slide.read(x0, y0, (cfg.tile_px, cfg.tile_px), cfg.mpp)
        g.attrs.update(
            store_attrs(
                "tiles",
                provenance=record,
                slide_id=slide_id,
                slide_mpp=slide.mpp,
                tile_mpp=cfg.mpp,
                tile_px=cfg.tile_px,
                tile_um=cfg.tile_px * cfg.mpp,
                mask_mpp=cfg.mask_mpp,
                background_rgb=background.tolist(),
            )
        )


def _draw_tile_qc(
    slide, slide_id, cfg, thumb, mask, grid, out_qc, threads, view=None, planes=None
) -> None:
    """The slide with its mask and tiles, at the mask's resolution or finer up to QC_SIDE_PX
    (``view``: that finer image, being read already); on a z-stack each tile is drawn in the
    colour of its chosen plane."""
    title = (
        f"{slide_id}  mpp {slide.mpp:.3g}  tiles {len(grid)}/{grid.n_total}  "
        f"foreground {100 * mask.mean():.1f}%"
    )
    colours = None
    if slide.planes > 1 and planes is not None:
        counts = np.bincount(planes, minlength=slide.planes)
        title += "  planes " + " ".join(f"z{z}:{c}" for z, c in enumerate(counts) if c)
        colours = plane_colours(planes, slide.planes)
    view_mpp = _qc_view_mpp(slide, cfg)
    if view is not None:
        image = view.result()
    elif view_mpp == cfg.mask_mpp:
        image = thumb
    else:
        image = read_thumbnail(slide, view_mpp, threads=threads)
    draw_qc(image, view_mpp, slide.mpp, mask, grid.boxes, out_qc, title, box_colours=colours)
