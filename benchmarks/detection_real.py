"""Cell detection on real specimens: the tile and cells stages, as a job runs them.

    python benchmarks/detection_real.py          # about 3 minutes on 2 CPU cores

BCCD blood-smear fields (../shared/data/bccd_blood_dev: 182 Romanowsky-stained 640 x 480 JPEG
fields at about 0.07 um/px, boxes for white cells, red cells and platelets): every field is a
slide of its own (mpp 0.07 given, as a sample sheet would), tiled and searched for cells with
``run_tile`` and ``run_cells``. Scored per box: a white cell (platelet) is found when a
detection lies inside its box; a detection inside a red-cell box and inside no white-cell or
platelet box is a false detection on a red cell; detections in no box are counted too.
Three settings: ``before`` (config.yaml as is: the darkest-channel map, which every slide used
before the stain choice existed), ``stain_in_sheet`` (config.yaml with the fields' stain,
Giemsa/Wright, in the sheet's ``stain`` column: the slide's chromatin-stain map) and
``blood_smear`` (configs/blood_smear.yaml, which also sizes the search for platelets).
Goals: white-cell recall >= 0.95, platelet recall >= 0.8 (blood config), false detections on
red cells <= 0.5 per field.

The real Aperio CMU-1 region (../shared/data/slides, H&E, 0.499 um/px): detections per mm2 of
foreground and a gallery of detected cells to look at.

Writes benchmarks/results/detection_real.{md,json} and detection_real_*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CYTOFM_SHARED_DATA", REPO.parent / "shared" / "data"))
BCCD = DATA / "bccd_blood_dev"
CMU = DATA / "slides" / "cmu-1-small-region.svs"
RESULTS = REPO / "benchmarks" / "results"
BCCD_MPP = 0.07  # SOURCE.md: median red cell 105 px = 7.5 um


def section(overlay: dict | None = None) -> dict:
    """A config section of config.yaml with an overlay merged as Snakemake merges it."""
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, overlay or {})
    return config


def settings() -> dict[str, tuple[dict, str]]:
    """name -> (merged config, the sheet's stain value for every field)."""
    blood = yaml.safe_load((REPO / "configs" / "blood_smear.yaml").read_text())
    return {
        "before": (section(), ""),
        "stain_in_sheet": (section(), "wright-giemsa"),
        "blood_smear": (section(blood), ""),
    }


def detect_field(
    path: Path, mpp: float | None, config: dict, work: Path, sheet_stain: str = ""
) -> tuple[np.ndarray, dict]:
    """Level-0 centres of the cells the pipeline finds on one image, and the cell store's
    stain choice (zero cells when it finds none)."""
    from cytofm.config import CellsConfig, TilingConfig, from_mapping
    from cytofm.stages.cells import run_cells
    from cytofm.stages.tile import run_tile
    from cytofm.store import open_store

    tiling = from_mapping(TilingConfig, config["tiling"], "tiling")
    cells = from_mapping(CellsConfig, config["cells"], "cells")
    sid = path.stem
    run_tile(path, sid, mpp, tiling, work / f"{sid}.tiles.zarr", work / f"{sid}.png")
    run_cells(path, sid, mpp, work / f"{sid}.tiles.zarr", cells, work / f"{sid}.cells.zarr",
              work / f"{sid}.cells.png", sheet_stain=sheet_stain)  # fmt: skip
    store = open_store(work / f"{sid}.cells.zarr")
    return store["coords"][:].astype(float), dict(store.attrs["stain"])


def inside(xy: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)


def score_bccd(config: dict, limit: int | None, sheet_stain: str = "") -> dict:
    boxes = pd.read_csv(BCCD / "boxes.csv")
    boxes = boxes[(boxes.xmax > boxes.xmin) & (boxes.ymax > boxes.ymin)]  # one degenerate box
    fields = sorted(pd.read_csv(BCCD / "fields.csv")["image"])[:limit]
    found = {"WBC": [0, 0], "Platelets": [0, 0]}
    rbc_false, outside, n_det, modes = [], [], [], {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for image in fields:
            xy, stain = detect_field(
                BCCD / "images" / image, BCCD_MPP, config, Path(tmp), sheet_stain
            )
            modes[stain["mode"]] = modes.get(stain["mode"], 0) + 1
            fb = boxes[boxes.image == image]
            target = np.zeros(len(xy), bool)
            on_rbc = np.zeros(len(xy), bool)
            for row in fb.itertuples():
                hit = inside(xy, (row.xmin, row.ymin, row.xmax, row.ymax))
                if row.label in found:
                    found[row.label][0] += int(hit.any())
                    found[row.label][1] += 1
                    target |= hit
                else:
                    on_rbc |= hit
            rbc_false.append(int((on_rbc & ~target).sum()))
            outside.append(int((~on_rbc & ~target).sum()))
            n_det.append(len(xy))
    return {
        "fields": len(fields),
        "seconds": time.perf_counter() - t0,
        "wbc_recall": found["WBC"][0] / max(found["WBC"][1], 1),
        "wbc": found["WBC"],
        "platelet_recall": found["Platelets"][0] / max(found["Platelets"][1], 1),
        "platelets": found["Platelets"],
        "red_cell_false_per_field": float(np.mean(rbc_false)),
        "outside_boxes_per_field": float(np.mean(outside)),
        "detections_per_field": float(np.mean(n_det)),
        "fields_without_detections": int(sum(n == 0 for n in n_det)),
        "chromatin_map": modes,
    }


def score_cmu(config: dict, out_png: Path) -> dict:
    from cytofm.config import CellsConfig, TilingConfig, from_mapping
    from cytofm.stages.cells import run_cells
    from cytofm.stages.tile import run_tile
    from cytofm.store import open_store

    tiling = from_mapping(TilingConfig, config["tiling"], "tiling")
    cells = from_mapping(CellsConfig, config["cells"], "cells")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_tile(CMU, "cmu1", None, tiling, tmp / "t.zarr", tmp / "t.png")
        summary = run_cells(CMU, "cmu1", None, tmp / "t.zarr", cells, tmp / "c.zarr", out_png,
                            gallery_size=96)  # fmt: skip
        tiles = open_store(tmp / "t.zarr")
        stain = dict(open_store(tmp / "c.zarr").attrs["stain"])
        mask = tiles["mask"][:]
        mask_mpp = tiles.attrs["mask_mpp"]
    area_mm2 = float(mask.sum()) * (mask_mpp / 1000) ** 2
    return {
        "cells": summary["n_cells"],
        "foreground_mm2": area_mm2,
        "cells_per_mm2": summary["n_cells"] / max(area_mm2, 1e-9),
        "chromatin_map": stain["mode"],
        "stain_reason": stain["reason"],
        "gallery": out_png.name,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--limit", type=int, default=None, help="first N fields only (a quick look)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not BCCD.is_dir() or not CMU.is_file():
        raise SystemExit(f"real data not found under {DATA} (set CYTOFM_SHARED_DATA)")
    os.environ.setdefault("MLFLOW_TRACKING_URI", "none")
    import logging

    logging.basicConfig(level=logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    res = {"command": "python benchmarks/detection_real.py " + " ".join(sys.argv[1:]),
           "bccd": {}, "cmu1": {}}  # fmt: skip
    for name, (config, sheet_stain) in settings().items():
        res["bccd"][name] = score_bccd(config, args.limit, sheet_stain)
        print(name, json.dumps(res["bccd"][name]), flush=True)
    for name in ("before",):  # the default map on H&E: unchanged by the stain choice
        config = settings()[name][0]
        res["cmu1"][name] = score_cmu(config, args.out / f"detection_real_cmu1_{name}.png")
        print("cmu1", name, json.dumps(res["cmu1"][name]), flush=True)
    (args.out / "detection_real.json").write_text(json.dumps(res, indent=1))
    lines = [
        "# Cell detection on real specimens",
        "",
        f"`{res['command'].strip()}`: the tile and cells stages run as a job runs them.",
        "",
        "## BCCD blood-smear fields (Romanowsky stain, 0.07 um/px)",
        "",
        "| setting | fields | white-cell recall | platelet recall | false on red cells / field "
        "| in no box / field | detections / field | fields with none | chromatin map |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["bccd"].items():
        lines.append(
            f"| {name} | {r['fields']} | {r['wbc_recall']:.3f} ({r['wbc'][0]}/{r['wbc'][1]}) | "
            f"{r['platelet_recall']:.3f} ({r['platelets'][0]}/{r['platelets'][1]}) | "
            f"{r['red_cell_false_per_field']:.2f} | {r['outside_boxes_per_field']:.2f} | "
            f"{r['detections_per_field']:.2f} | {r['fields_without_detections']} | "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(r['chromatin_map'].items()))} |"
        )
    lines += [
        "",
        "`before`: config.yaml (the darkest-channel map); `stain_in_sheet`: config.yaml with "
        "the fields' stain in the sheet (the chromatin-stain map); `blood_smear`: "
        "configs/blood_smear.yaml. "
        "Goals: white-cell recall >= 0.95, platelet recall >= 0.8 (blood config), false "
        "detections on red cells <= 0.5 per field. BCCD boxes only some cells of a field, so "
        "'in no box' counts both false detections and unboxed cells.",
        "",
        "## CMU-1 region (H&E, 0.499 um/px)",
        "",
        "| setting | cells | foreground mm2 | cells / mm2 | chromatin map | gallery |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res["cmu1"].items():
        lines.append(
            f"| {name} | {r['cells']} | {r['foreground_mm2']:.2f} | {r['cells_per_mm2']:.0f} | "
            f"{r['chromatin_map']} | [{r['gallery']}]({r['gallery']}) |"
        )
    (args.out / "detection_real.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
