"""A slide's cells, tissue and tiles as GeoJSON that QuPath imports (File > Import objects).

QuPath reads a FeatureCollection of Features whose ``properties.objectType`` says what each
is (``detection``, ``annotation``, ``tile``), with an optional ``classification`` ({name,
color}) and ``measurements`` ({name: value}, the form QuPath writes since 0.4), in pixel
coordinates of the full-resolution image with the origin at its top-left corner: the level-0
pixels cytofm's stores hold. Cells are detections: a small circle (12-gon) around each centre,
whose exact centre is also a measurement pair; the tissue mask is one annotation per
connected region (holes kept); tiles are optional.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import shapely

from cytofm.errors import InputDataError
from cytofm.store import as_str_array, open_store
from cytofm.store_attrs import read_attrs

__all__ = ["CELL_CLASS", "TISSUE_CLASS", "slide_geojson", "write_slide_geojson"]

CELL_CLASS = ("Cell", (220, 40, 40))
TISSUE_CLASS = ("Tissue", (40, 160, 40))
_POLYGONAL = ("Polygon", "MultiPolygon")
_NAMESPACE = uuid.UUID("6f1c2d4e-58a7-4b1e-9a43-0c5e2f7d9b10")  # ids: stable per slide and row


def _feature(kind: str, geometry: dict, fid: str, name: str, colour, measurements=None) -> dict:
    props: dict = {
        "objectType": kind,
        "classification": {"name": name, "color": [int(c) for c in colour]},
    }
    if measurements:
        props["measurements"] = measurements
    return {"type": "Feature", "id": fid, "geometry": geometry, "properties": props}


def _circle(x: float, y: float, r: float, n: int = 12) -> dict:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.stack([x + r * np.cos(a), y + r * np.sin(a)], 1).round(2).tolist()
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def _class_colour(i: int) -> tuple[int, int, int]:
    """A distinct colour per class index (golden-angle hues)."""
    hue = int((i * 137.508) % 180)
    bgr = cv2.cvtColor(np.uint8([[[hue, 200, 220]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[2]), int(bgr[1]), int(bgr[0])


def tissue_features(mask: np.ndarray, level0_per_px: float, slide_id: str) -> list[dict]:
    """One annotation per connected region of the mask (outer ring and its holes), in
    level-0 pixels: mask pixel (i, j) covers level-0 [j, j + 1) x [i, i + 1) times the scale."""
    m = np.ascontiguousarray(mask, np.uint8)
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    if hierarchy is None:
        return out
    hierarchy = hierarchy[0]

    def ring(c: np.ndarray) -> list[list[float]]:
        pts = (c.reshape(-1, 2).astype(np.float64) + 0.5) * level0_per_px
        pts = pts.round(1).tolist()
        return [*pts, pts[0]]

    for i, c in enumerate(contours):
        if hierarchy[i][3] != -1 or len(c) < 3:  # holes are added to their outer ring
            continue
        holes, child = [], hierarchy[i][2]
        while child != -1:
            if len(contours[child]) >= 3:
                holes.append(ring(contours[child]))
            child = hierarchy[child][0]
        # boundaries traced through pixel centres can touch (a one-pixel wall between a hole
        # and the outside): repaired into valid polygons, which QuPath's geometry library needs
        shape = shapely.make_valid(shapely.Polygon(ring(c), holes))
        parts = [g for g in getattr(shape, "geoms", [shape]) if g.geom_type in _POLYGONAL]
        for k, part in enumerate(parts):
            geometry = json.loads(shapely.to_geojson(part))
            fid = str(uuid.uuid5(_NAMESPACE, f"{slide_id}/tissue/{i}/{k}"))
            out.append(_feature("annotation", geometry, fid, *TISSUE_CLASS))
    return out


def slide_geojson(
    cells_store: str | Path,
    tiles_store: str | Path,
    *,
    attention: np.ndarray | None = None,
    class_probs: np.ndarray | None = None,
    class_names: Sequence[str] = (),
    tiles: bool = False,
    cell_diameter_um: float = 9.0,
) -> dict:
    """The FeatureCollection of one slide: every cell of ``cells_store`` as a detection, the
    tissue of ``tiles_store`` as annotations and, with ``tiles``, the kept tiles.

    ``attention`` (n_cells,) and ``class_probs`` (n_cells, n_classes) with ``class_names``,
    in the store's row order, become measurements; with class probabilities a cell is
    classified as its most probable class.
    """
    cells, tiles_g = open_store(cells_store), open_store(tiles_store)
    cattrs = read_attrs(cells, "cells", str(cells_store))
    tattrs = read_attrs(tiles_g, "tiles", str(tiles_store))
    if cattrs.slide_id != tattrs.slide_id:
        raise InputDataError(
            f"{cells_store} holds slide '{cattrs.slide_id}' but {tiles_store} holds "
            f"'{tattrs.slide_id}': give the cell and tile stores of the same slide"
        )
    if cattrs.fields:
        raise InputDataError(
            f"{cells_store} is a specimen of {len(cattrs.fields)} microscope fields: QuPath opens "
            "each field as its own image, so there is no one image these coordinates belong to. "
            "Export slides only (the field of each cell is in the store's 'field' and "
            "'field_coords' arrays)."
        )
    coords = np.asarray(cells["coords"][:], np.float64).reshape(-1, 2)
    n = len(coords)
    scores = np.asarray(cells["scores"][:], np.float64) if "scores" in cells else np.zeros(n)
    ids = as_str_array(cells["ids"][:]).tolist() if "ids" in cells else [str(i) for i in range(n)]
    for name, values in (("attention", attention), ("class_probs", class_probs)):
        if values is not None and len(values) != n:
            raise InputDataError(
                f"{name} has {len(values)} rows but {cells_store} holds {n} cells: give values "
                "in the store's row order"
            )
    if class_probs is not None and np.shape(class_probs)[1] != len(class_names):
        raise InputDataError(
            f"class_probs has {np.shape(class_probs)[1]} columns but {len(class_names)} class "
            "names were given"
        )
    radius = cell_diameter_um / 2 / cattrs.slide_mpp
    features = tissue_features(
        np.asarray(tiles_g["mask"][:]), tattrs.mask_mpp / tattrs.slide_mpp, cattrs.slide_id
    )
    if tiles:
        for i, (x0, y0, x1, y1) in enumerate(np.asarray(tiles_g["boxes"][:], float).tolist()):
            box = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
            fid = str(uuid.uuid5(_NAMESPACE, f"{cattrs.slide_id}/tile/{i}"))
            geometry = {"type": "Polygon", "coordinates": [box]}
            features.append(_feature("tile", geometry, fid, "Tile", (90, 90, 200)))
    for i in range(n):
        x, y = coords[i]
        m = {
            "centre x (px)": float(x),
            "centre y (px)": float(y),
            "detector score": float(scores[i]),
        }
        name, colour = CELL_CLASS
        if attention is not None:
            m["attention"] = float(attention[i])
        if class_probs is not None:
            probs = np.asarray(class_probs[i], float)
            for c, p in zip(class_names, probs, strict=True):
                m[f"p({c})"] = float(p)
            best = int(np.argmax(probs))
            name, colour = str(class_names[best]), _class_colour(best)
        fid = str(uuid.uuid5(_NAMESPACE, f"{cattrs.slide_id}/cell/{ids[i]}"))
        features.append(_feature("detection", _circle(x, y, radius), fid, name, colour, m))
    return {"type": "FeatureCollection", "features": features}


def write_slide_geojson(out: str | Path, cells_store, tiles_store, **kwargs) -> dict:
    """:func:`slide_geojson` written to ``out``; returns counts per object type."""
    collection = slide_geojson(cells_store, tiles_store, **kwargs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(collection, separators=(",", ":")))
    tmp.replace(out)
    counts: dict[str, int] = {}
    for f in collection["features"]:
        kind = f["properties"]["objectType"]
        counts[kind] = counts.get(kind, 0) + 1
    return counts
