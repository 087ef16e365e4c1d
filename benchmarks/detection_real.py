"""Cell detection on real specimens: the tile and cells stages, as a job runs them.

    python benchmarks/detection_real.py              # about 5 minutes on 2 CPU cores
    python benchmarks/detection_real.py --only pap   # the Pap-smear fields alone

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

The first 12 slides of the synthetic demo, rendered as the demo renders them: recall and
precision against their ground truth, with config.yaml and with configs/pap_smear.yaml.

Pap-smear fields (../shared/data/pap_fields_dev: 55 grayscale extended-depth-of-field fields of
Cervix93 and ISBI 2014, one point per squamous nucleus, at the scales SOURCE.md estimates: 0.24
um/px for Cervix93, 0.30 for ISBI), every field a slide of its own with the tile and cells
stages. Scored per nucleus: found when a detection lies within 4 um (one-to-one); detections per
annotated nucleus; detections on glass (outside the tile store's foreground mask) and within
2 um of the image's border, per field. The detector's settings for Pap smears
(configs/pap_smear.yaml) are chosen by 5-fold cross-validation over whole fields: on the
training folds, the setting of the grid with the highest recall among those with at most 1.4
detections per nucleus; the figures that count are those of each held-out fold. Goals: recall
>= 0.92, detections per nucleus <= 1.4, none on glass or borders.

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


PAP = DATA / "pap_fields_dev"
PAP_MPP = {"cervix93": 0.24, "isbi2014": 0.30}  # SOURCE.md: estimated from nucleus sizes
MATCH_UM = 4.0
BORDER_UM = 2.0
PAP_FOLDS = 5
PAP_GRADES = ("cervix93 NILM", "cervix93 LSIL", "cervix93 HSIL")  # the field's Bethesda grade
PAP_FIXED = {"image_edge": "mirror"}  # fields cut through sheets of cells (the grid's search
# runs the detector on whole fields, whose filters mirror at the edge as this setting does)
# the cross-validated grid (keys of the cells section)
PAP_GRID = {
    "min_contrast": [0.0, 0.25, 0.3, 0.35, 0.4],
    "min_surround": [0.0, 0.05, 0.1, 0.15],
    "merge_um": [5.0, 8.0, 11.0],
    "nucleus_max_um": [10.0, 14.0],
    "threshold": [0.12, 0.2],
}


def pap_fields(limit: int | None = None) -> list[dict]:
    fields = pd.read_csv(PAP / "fields.csv").sort_values("image")
    nuclei = pd.read_csv(PAP / "nuclei.csv")
    meta = pd.read_csv(PAP / "fields_meta.csv")
    grades = dict(zip(meta["image"], meta["image_grade"].fillna(""), strict=True))
    out = []
    for r in fields.itertuples():
        subset = r.image.split("_")[0]
        truth = nuclei[nuclei.image == r.image][["x", "y"]].to_numpy(float)
        grade = grades.get(r.image, "")
        out.append({"image": r.image, "subset": subset, "mpp": PAP_MPP[subset], "grade": grade,
                    "size": (int(r.width), int(r.height)), "truth": truth})  # fmt: skip
    return out[:limit]


def pap_folds(fields: list[dict], k: int = PAP_FOLDS) -> np.ndarray:
    """Fold of each field: whole fields, dealt round-robin within each subset so every fold
    holds both sources."""
    fold = np.zeros(len(fields), int)
    for subset in sorted({f["subset"] for f in fields}):
        members = [i for i, f in enumerate(fields) if f["subset"] == subset]
        for n, i in enumerate(members):
            fold[i] = n % k
    return fold


def pap_count(field: dict, xy: np.ndarray, mask=None, mask_mpp: float = 0.0) -> dict:
    """Matches within MATCH_UM, detections, and those on glass and at the border."""
    from cytofm.cells.metrics import match_pairs

    mpp, (w, h) = field["mpp"], field["size"]
    pi, _, _ = match_pairs(xy, field["truth"], MATCH_UM / mpp)
    edge = BORDER_UM / mpp
    at_border = (
        (xy[:, 0] < edge)
        | (xy[:, 1] < edge)
        | (xy[:, 0] > w - 1 - edge)
        | (xy[:, 1] > h - 1 - edge)
    )
    glass = 0
    if mask is not None and len(xy):
        f = mpp / mask_mpp
        rows = np.clip((xy[:, 1] * f).astype(int), 0, mask.shape[0] - 1)
        cols = np.clip((xy[:, 0] * f).astype(int), 0, mask.shape[1] - 1)
        glass = int((~mask[rows, cols].astype(bool)).sum())
    return {"truth": len(field["truth"]), "detections": len(xy), "matched": len(pi),
            "border": int(at_border.sum()), "border_matched": int(at_border[pi].sum()),
            "glass": glass}  # fmt: skip


def pap_fast_counts(fields: list[dict], base: dict, work: Path) -> dict:
    """Per grid setting, per field counts from the detector run on the whole field (the
    glass colour from the tile stage): what the cross-validation chooses on."""
    import dataclasses
    import itertools

    from PIL import Image

    from cytofm.cells.detect import ClassicalDetector
    from cytofm.cells.extract import EDGE_UM
    from cytofm.config import CellsConfig, TilingConfig, from_mapping
    from cytofm.stages.tile import run_tile
    from cytofm.store import open_store

    tiling = from_mapping(TilingConfig, base["tiling"], "tiling")
    cells = from_mapping(CellsConfig, base["cells"], "cells")
    images = []
    for f in fields:
        sid = Path(f["image"]).stem
        store = work / f"{sid}.tiles.zarr"
        if not store.exists():
            run_tile(PAP / "images" / f["image"], sid, f["mpp"], tiling, store, work / "qc.png")
        background = np.asarray(open_store(store).attrs["background_rgb"], np.float32)
        rgb = np.asarray(Image.open(PAP / "images" / f["image"]).convert("RGB"))
        images.append((rgb, background))
    keys = list(PAP_GRID)
    counts = {}
    for values in itertools.product(*PAP_GRID.values()):
        setting = dict(zip(keys, values, strict=True))
        cfg = dataclasses.replace(cells, **setting)
        per = []
        for f, (rgb, background) in zip(fields, images, strict=True):
            xy, _ = ClassicalDetector(cfg, background)(rgb, f["mpp"])
            xy = np.asarray(xy, float).reshape(-1, 2)
            edge = EDGE_UM / f["mpp"] - 0.5  # image_edge mirror's rule, in pixel centres
            h, w = rgb.shape[:2]
            inside = (xy.min(1) >= edge) & (xy[:, 0] <= w - 1 - edge) & (xy[:, 1] <= h - 1 - edge)
            per.append(pap_count(f, xy[inside]))
        counts[tuple(values)] = per
    return {"keys": keys, "counts": counts}


def pap_choose(fast: dict, train: np.ndarray) -> dict:
    """The setting with the highest recall on the training fields among those with at most
    1.4 detections per nucleus there (the fewest detections per nucleus if none has)."""
    scored = []
    for values, per in fast["counts"].items():
        t = sum(per[i]["truth"] for i in train)
        m = sum(per[i]["matched"] for i in train)
        d = sum(per[i]["detections"] for i in train)
        scored.append((m / max(t, 1), d / max(t, 1), values))
    ok = [s for s in scored if s[1] <= 1.4]
    best = max(ok, key=lambda s: (s[0], -s[1])) if ok else min(scored, key=lambda s: s[1])
    return dict(zip(fast["keys"], best[2], strict=True))


def pap_stage(fields: list[dict], config: dict, work: Path, mpp_factor: float = 1.0) -> list:
    """Counts per field from the tile and cells stages as a job runs them."""
    from cytofm.config import CellsConfig, TilingConfig, from_mapping
    from cytofm.stages.cells import run_cells
    from cytofm.stages.tile import run_tile
    from cytofm.store import open_store

    tiling = from_mapping(TilingConfig, config["tiling"], "tiling")
    cells = from_mapping(CellsConfig, config["cells"], "cells")
    per = []
    for f in fields:
        sid = Path(f["image"]).stem
        mpp = f["mpp"] * mpp_factor
        path = PAP / "images" / f["image"]
        tiles = work / f"{sid}.{mpp_factor}.tiles.zarr"
        if not tiles.exists():
            run_tile(path, sid, mpp, tiling, tiles, work / "qc.png")
        out = work / f"{sid}.cells.zarr"
        run_cells(path, sid, mpp, tiles, cells, out, work / "cells.png", sheet_stain="papanicolaou")
        xy = np.asarray(open_store(out)["coords"][:], float).reshape(-1, 2)
        store = open_store(tiles)
        per.append({**pap_count({**f, "mpp": f["mpp"]}, xy, store["mask"][:],
                                store.attrs["mask_mpp"] / mpp_factor), "xy": xy})  # fmt: skip
    return per


def pap_totals(per: list[dict], fields: list[dict], subset: str | None = None) -> dict:
    """Totals over the fields of ``subset`` (a source, or a Cervix93 grade; None: all)."""
    rows = [
        c
        for c, f in zip(per, fields, strict=True)
        if subset in (None, f["subset"], f"cervix93 {f['grade']}")
    ]
    t = sum(c["truth"] for c in rows)
    return {
        "fields": len(rows),
        "nuclei": t,
        "recall": sum(c["matched"] for c in rows) / max(t, 1),
        "detections_per_nucleus": sum(c["detections"] for c in rows) / max(t, 1),
        "glass_per_field": sum(c["glass"] for c in rows) / max(len(rows), 1),
        "border_per_field": sum(c["border"] for c in rows) / max(len(rows), 1),
        "border_unmatched_per_field": sum(c["border"] - c["border_matched"] for c in rows)
        / max(len(rows), 1),
    }


def pap_overlay(field: dict, xy: np.ndarray, out_png: Path) -> None:
    """Truth (green circles, the matching radius) and detections (crosses: blue matched, red
    not) on one field."""
    import cv2

    from cytofm.cells.metrics import match_pairs

    rgb = cv2.cvtColor(cv2.imread(str(PAP / "images" / field["image"])), cv2.COLOR_BGR2RGB)
    radius = int(round(MATCH_UM / field["mpp"]))
    pi, _, _ = match_pairs(xy, field["truth"], MATCH_UM / field["mpp"])
    for x, y in field["truth"]:
        cv2.circle(rgb, (int(x), int(y)), radius, (0, 170, 0), 2)
    for j, (x, y) in enumerate(xy):
        colour = (30, 60, 255) if j in set(pi.tolist()) else (230, 0, 0)
        cv2.drawMarker(rgb, (int(x), int(y)), colour, cv2.MARKER_CROSS, 16, 2)
    small = cv2.resize(rgb, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(out_png), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))


def score_pap(limit: int | None, out: Path) -> dict:
    """config.yaml as is, the cross-validated settings on held-out folds, and the settings
    chosen on every field (configs/pap_smear.yaml's), all through the stages."""
    fields = pap_fields(limit)
    folds = pap_folds(fields)
    base = section()
    res = {"fields": len(fields), "folds": PAP_FOLDS, "grid": PAP_GRID, "match_um": MATCH_UM,
           "border_um": BORDER_UM, "mpp": PAP_MPP}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        before = pap_stage(fields, base, work)
        res["before"] = {s or "all": pap_totals(before, fields, s)
                         for s in (None, *sorted(PAP_MPP))}  # fmt: skip
        fast = pap_fast_counts(fields, base, work)
        held_out = [None] * len(fields)
        res["chosen_per_fold"] = []
        for k in range(PAP_FOLDS):
            test = np.flatnonzero(folds == k)
            chosen = pap_choose(fast, np.flatnonzero(folds != k))
            res["chosen_per_fold"].append(chosen)
            config = section({"cells": {**chosen, **PAP_FIXED}})
            per = pap_stage([fields[i] for i in test], config, work)
            for i, c in zip(test, per, strict=True):
                held_out[i] = c
        res["held_out"] = {s or "all": pap_totals(held_out, fields, s)
                           for s in (None, *sorted(PAP_MPP), *PAP_GRADES)}  # fmt: skip
        final = pap_choose(fast, np.arange(len(fields)))
        res["final"] = final
        pap_config = yaml.safe_load((REPO / "configs" / "pap_smear.yaml").read_text())
        res["shipped"] = pap_config["cells"]
        shipped = section(pap_config)
        in_sample = pap_stage(fields, shipped, work)
        res["in_sample"] = {s or "all": pap_totals(in_sample, fields, s)
                            for s in (None, *sorted(PAP_MPP))}  # fmt: skip
        res["scale"] = {}
        for factor in (0.85, 1.15):
            per = pap_stage(fields, shipped, work, factor)
            res["scale"][factor] = pap_totals(per, fields)
        worst = max(range(len(fields)), key=lambda i: held_out[i]["truth"] - held_out[i]["matched"])
        for name, i in (("example", 0), ("most_missed", worst)):
            png = out / f"detection_real_pap_{name}.png"
            pap_overlay(fields[i], held_out[i]["xy"], png)
            res[f"overlay_{name}"] = {"image": fields[i]["image"], "png": png.name}
        res["seconds"] = time.perf_counter() - t0
    return res


DEMO_SLIDES = 12


def score_demo(config_overlay: dict | None = None) -> dict:
    """The first DEMO_SLIDES slides of the default demo (rendered as its demo_slide jobs
    render them), through the tile and cells stages, scored against their ground truth as the
    detection_eval job scores them (config.yaml's detection_eval.tolerance_um)."""
    from cytofm.cells.metrics import match_pairs
    from cytofm.config import CellsConfig, DemoConfig, TilingConfig, from_mapping
    from cytofm.stages.cells import run_cells
    from cytofm.stages.detection_eval import run_detection_eval
    from cytofm.stages.tile import run_tile
    from cytofm.store import open_store
    from cytofm.synthetic.demo import demo_slide_ids, make_demo_slide

    config = section(config_overlay)
    demo = from_mapping(DemoConfig, config["demo"], "demo")
    tiling = from_mapping(TilingConfig, config["tiling"], "tiling")
    cells = from_mapping(CellsConfig, config["cells"], "cells")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stores, truths = [], []
        for sid in demo_slide_ids(demo)[:DEMO_SLIDES]:
            slide, truth = work / f"{sid}.tif", work / f"{sid}.tsv"
            make_demo_slide(demo, sid, slide, truth)
            run_tile(slide, sid, None, tiling, work / f"{sid}.tiles.zarr", work / "qc.png")
            run_cells(slide, sid, None, work / f"{sid}.tiles.zarr", cells,
                      work / f"{sid}.cells.zarr", work / "g.png")  # fmt: skip
            stores.append(work / f"{sid}.cells.zarr")
            truths.append(truth)
        tolerance = float(config["detection_eval"]["tolerance_um"])
        res = run_detection_eval(stores, truths, tolerance, work / "detection.json")
        found: dict[str, list[int]] = {}  # class -> [found, cells]
        for store, truth in zip(stores, truths, strict=True):
            table = pd.read_csv(truth, sep="\t")
            xy = np.asarray(open_store(store)["coords"][:], float).reshape(-1, 2)
            _, ti, _ = match_pairs(
                xy * demo.mpp, table[["x", "y"]].to_numpy() * demo.mpp, tolerance
            )
            hit = np.zeros(len(table), bool)
            hit[ti] = True
            for cls, h in zip(table["class"], hit, strict=True):
                found.setdefault(cls, [0, 0])
                found[cls][0] += int(h)
                found[cls][1] += 1
    per_class = {c: f / max(n, 1) for c, (f, n) in sorted(found.items())}
    return {"slides": len(stores), "tolerance_um": tolerance, **res["pooled"],
            "recall_per_class": per_class}  # fmt: skip


def demo_lines(r: dict) -> list[str]:
    lines = [
        "",
        f"## The synthetic demo's slides (first {DEMO_SLIDES} of config.yaml's demo)",
        "",
        "| setting | slides | recall | precision | true / false / missed | recall per class |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in r.items():
        per = ", ".join(f"{c} {v:.3f}" for c, v in t["recall_per_class"].items())
        lines.append(
            f"| {name} | {t['slides']} | {t['recall']:.3f} | {t['precision']:.3f} | "
            f"{t['tp']} / {t['fp']} / {t['fn']} | {per} |"
        )
    lines.append(f"\nA match is a detection within {t['tolerance_um']} um of a true centre.")
    return lines


def pap_lines(r: dict) -> list[str]:
    lines = [
        "",
        "## Pap-smear fields (Cervix93 and ISBI 2014 EDF, grayscale)",
        "",
        f"{r['fields']} fields; a nucleus is found when a detection lies within {r['match_um']} "
        f"um of it (one-to-one); scales assumed: "
        + ", ".join(f"{k} {v} um/px" for k, v in r["mpp"].items())
        + f". Glass: detections outside the tile store's foreground mask; border: within "
        f"{r['border_um']} um of the image's edge. Held out: each field scored with the "
        f"settings chosen on the other {r['folds'] - 1} of {r['folds']} folds (whole fields).",
        "",
        "| setting | subset | fields | nuclei | recall | detections / nucleus | on glass / field "
        "| at border / field (not on an annotated nucleus) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "before": "config.yaml as is",
        "held_out": "cross-validated, held-out folds",
        "in_sample": "configs/pap_smear.yaml (chosen on all fields: in-sample)",
    }
    for key, label in names.items():
        for subset, t in r[key].items():
            lines.append(
                f"| {label} | {subset} | {t['fields']} | {t['nuclei']} | {t['recall']:.3f} | "
                f"{t['detections_per_nucleus']:.2f} | {t['glass_per_field']:.2f} | "
                f"{t['border_per_field']:.2f} ({t['border_unmatched_per_field']:.2f}) |"
            )
    for factor, t in r["scale"].items():
        lines.append(
            f"| configs/pap_smear.yaml, scale x {factor} | all | {t['fields']} | {t['nuclei']} | "
            f"{t['recall']:.3f} | {t['detections_per_nucleus']:.2f} | "
            f"{t['glass_per_field']:.2f} | {t['border_per_field']:.2f} "
            f"({t['border_unmatched_per_field']:.2f}) |"
        )
    held = r["held_out"]["all"]
    goals = [
        ("recall >= 0.92", held["recall"] >= 0.92),
        ("detections per nucleus <= 1.4", held["detections_per_nucleus"] <= 1.4),
        ("no detections on glass", held["glass_per_field"] == 0),
        (
            "no detections at the border but annotated nuclei",
            held["border_unmatched_per_field"] == 0,
        ),
    ]
    lines += [
        "",
        "Goals on the held-out folds: "
        + "; ".join(f"{g} ({'met' if ok else 'not met'})" for g, ok in goals)
        + ".",
        "",
        "Chosen per fold: "
        + "; ".join(", ".join(f"{k} {v}" for k, v in c.items()) for c in r["chosen_per_fold"])
        + f". On all fields: {', '.join(f'{k} {v}' for k, v in r['final'].items())}"
        + (
            " (configs/pap_smear.yaml's)."
            if all(r["shipped"].get(k) == v for k, v in {**r["final"], **PAP_FIXED}.items())
            else f"; configs/pap_smear.yaml differs: {r['shipped']}."
        ),
        "",
        f"Grid: {', '.join(f'{k} {v}' for k, v in r['grid'].items())}; always "
        + ", ".join(f"{k} {v}" for k, v in PAP_FIXED.items())
        + ".",
        "",
        f"Overlays (green: annotated nucleus and the matching radius; blue: matched detection; "
        f"red: unmatched), held-out settings: [{r['overlay_example']['image']}]"
        f"({r['overlay_example']['png']}), the field with the most missed nuclei "
        f"[{r['overlay_most_missed']['image']}]({r['overlay_most_missed']['png']}).",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--limit", type=int, default=None, help="first N fields only (a quick look)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--only",
        choices=("bccd", "cmu1", "demo", "pap"),
        nargs="*",
        default=["bccd", "cmu1", "demo", "pap"],
        help="sections to run again (the others are kept from the last results)",
    )
    args = ap.parse_args()
    if not BCCD.is_dir() or not CMU.is_file() or not PAP.is_dir():
        raise SystemExit(f"real data not found under {DATA} (set CYTOFM_SHARED_DATA)")
    os.environ.setdefault("MLFLOW_TRACKING_URI", "none")
    import logging

    logging.basicConfig(level=logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    last = args.out / "detection_real.json"
    res = json.loads(last.read_text()) if last.is_file() else {}
    res["command"] = "python benchmarks/detection_real.py " + " ".join(sys.argv[1:])
    if "bccd" in args.only:
        res["bccd"] = {}
        for name, (config, sheet_stain) in settings().items():
            res["bccd"][name] = score_bccd(config, args.limit, sheet_stain)
            print(name, json.dumps(res["bccd"][name]), flush=True)
    if "cmu1" in args.only:
        res["cmu1"] = {}
        for name in ("before",):  # the default map on H&E: unchanged by the stain choice
            config = settings()[name][0]
            res["cmu1"][name] = score_cmu(config, args.out / f"detection_real_cmu1_{name}.png")
            print("cmu1", name, json.dumps(res["cmu1"][name]), flush=True)
    if "demo" in args.only:
        pap_config = yaml.safe_load((REPO / "configs" / "pap_smear.yaml").read_text())
        res["demo"] = {
            "config.yaml": score_demo(),
            "configs/pap_smear.yaml": score_demo(pap_config),
        }
        print("demo", json.dumps(res["demo"]), flush=True)
    if "pap" in args.only:
        res["pap"] = score_pap(args.limit, args.out)
        print("pap", json.dumps({k: res["pap"][k] for k in ("before", "held_out")}), flush=True)
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
    if "demo" in res:
        lines += demo_lines(res["demo"])
    if "pap" in res:
        lines += pap_lines(res["pap"])
    (args.out / "detection_real.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
