"""QC images: the slide with its foreground mask and tile grid (and cells) drawn on it, the
gallery of a slide's cell patches with the stains its detector used, and detections against a
table of true cells."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cytofm.cells.stain import StainChoice

__all__ = ["detection_overlay", "draw_qc", "patch_gallery", "plane_colours"]


def draw_qc(
    thumb: np.ndarray,
    thumb_mpp: float,
    slide_mpp: float,
    mask: np.ndarray,
    boxes: np.ndarray,
    out_png: str | Path,
    title: str,
    points: np.ndarray | None = None,
    max_side: int = 2048,
    box_colours: np.ndarray | None = None,
) -> Path:
    """Write a PNG: mask outline in green, kept tiles in blue (or each in its
    ``box_colours`` BGR row), optional points in red.

    ``boxes`` and ``points`` are level-0 pixels; they are scaled to the thumbnail here.
    """
    scale = min(1.0, max_side / max(thumb.shape[:2]))
    img = (
        thumb
        if scale == 1.0
        else cv2.resize(
            thumb,
            (int(thumb.shape[1] * scale), int(thumb.shape[0] * scale)),
            interpolation=cv2.INTER_AREA,
        )
    )
    img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    m = cv2.resize(
        mask.astype(np.uint8), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST
    )
    # masked pixels: 0.6 x colour + 0.4 x green, in place (no full-size temporaries)
    tinted = cv2.convertScaleAbs(img, alpha=0.6)
    cv2.add(tinted, (32.0, 80.0, 32.0, 0.0), dst=img, mask=m)
    del tinted
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, (0, 140, 0), 1)
    f = slide_mpp / thumb_mpp * scale  # level-0 px -> drawing px
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        colour = (200, 90, 0) if box_colours is None else tuple(int(c) for c in box_colours[i])
        thick = 1 if box_colours is None else 2
        cv2.rectangle(
            img, (int(x0 * f), int(y0 * f)), (int(x1 * f) - 1, int(y1 * f) - 1), colour, thick
        )
    if points is not None:
        for x, y in points:
            cv2.circle(img, (int(x * f), int(y * f)), 2, (0, 0, 220), -1)
    if img.shape[1] < 640:  # room for the title
        img = cv2.copyMakeBorder(
            img, 0, 0, 0, 640 - img.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255)
        )
    bar = np.full((28, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.concatenate([bar, img], axis=0))
    return out


def plane_colours(planes: np.ndarray, n_planes: int) -> np.ndarray:
    """BGR colour per tile of its focal plane (viridis: dark = first plane, yellow = last)."""
    lut = cv2.applyColorMap(
        np.linspace(0, 255, max(n_planes, 2)).astype(np.uint8), cv2.COLORMAP_VIRIDIS
    )
    return lut.reshape(-1, 3)[np.asarray(planes, np.int64)]


def _stain_band(stain: StainChoice | None, n: int, width: int) -> np.ndarray:
    """A strip above the gallery: the chromatin map used and, on the stain map, a swatch of
    each estimated stain (the colour 1 OD of it gives on white), chromatin stain first."""
    band = np.full((28, max(width, 260), 3), 255, np.uint8)
    x = 4
    if stain is not None and stain.vectors is not None:
        rows = sorted(range(len(stain.vectors)), key=lambda i: i != stain.nuclear)
        for i in rows:
            colour = np.clip(255 * np.exp(-np.asarray(stain.vectors[i])), 0, 255).astype(np.uint8)
            band[4:24, x : x + 20] = colour
            cv2.rectangle(
                band, (x, 4), (x + 19, 23), (0, 0, 0) if i == stain.nuclear else (160,) * 3
            )
            x += 24
    mode = stain.mode if stain is not None else "min_od"
    text = f"{n} cells; chromatin map: {mode}"
    cv2.putText(band, text, (x + 2, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def patch_gallery(
    images: np.ndarray,
    out_png: str | Path,
    columns: int = 12,
    stain: StainChoice | None = None,
    n_cells: int | None = None,
) -> Path:
    """Write a grid of patches (a person checks patches by looking, not reading numbers),
    under a strip that names the chromatin map and shows the slide's stain vectors."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(images)
    if n == 0:
        sheet = np.full((64, 260, 3), 255, np.uint8)
        cv2.putText(sheet, "no cells found", (8, 38), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (160, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
    else:
        rows = int(np.ceil(n / columns))
        p = images.shape[1]
        sheet = np.full((rows * (p + 2), min(n, columns) * (p + 2), 3), 255, np.uint8)
        for i, img in enumerate(images):
            r, c = divmod(i, columns)
            sheet[r * (p + 2) : r * (p + 2) + p, c * (p + 2) : c * (p + 2) + p] = img
    band = _stain_band(stain, n if n_cells is None else n_cells, sheet.shape[1])
    if band.shape[1] > sheet.shape[1]:
        pad = np.full((sheet.shape[0], band.shape[1] - sheet.shape[1], 3), 255, np.uint8)
        sheet = np.concatenate([sheet, pad], axis=1)
    sheet = np.concatenate([band, sheet], axis=0)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return out


def detection_overlay(
    slide,
    coords: np.ndarray,
    truth: np.ndarray,
    tolerance_px: float,
    out_png: str | Path,
    view_mpp: float = 0.5,
    size_px: int = 512,
) -> Path:
    """Truth against detections on the slide, in the ``size_px`` window (at ``view_mpp``)
    holding the most true cells: a green ring of the matching radius around each matched true
    centre, a yellow one around each missed one, a cyan cross on each matched detection and a
    red one on each detection that matches nothing. ``coords`` and ``truth``: level-0 px."""
    from cytofm.cells.metrics import match_pairs

    coords = np.asarray(coords, float).reshape(-1, 2)
    truth = np.asarray(truth, float).reshape(-1, 2)
    view_mpp = max(view_mpp, float(slide.mpp))
    span = size_px * view_mpp / slide.mpp  # level-0 px the window covers
    w, h = slide.dimensions
    anchor = truth if len(truth) else coords
    if len(anchor):  # the window-sized square of a grid holding the most true cells
        cell = np.floor(anchor / span).astype(np.int64)
        _, inverse, counts = np.unique(cell, axis=0, return_inverse=True, return_counts=True)
        centre = anchor[inverse.ravel() == int(np.argmax(counts))].mean(0)
    else:
        centre = np.array([w / 2, h / 2])
    x0 = float(np.clip(centre[0] - span / 2, 0, max(w - span, 0)))
    y0 = float(np.clip(centre[1] - span / 2, 0, max(h - span, 0)))
    rgb = np.ascontiguousarray(slide.read(x0, y0, (size_px, size_px), view_mpp))
    pi, ti, _ = match_pairs(coords, truth, tolerance_px)
    scale = slide.mpp / view_mpp

    def at(p):
        return (int(round((p[0] - x0) * scale)), int(round((p[1] - y0) * scale)))

    ring = max(int(round(tolerance_px * scale)), 3)
    hit_t, hit_p = set(ti.tolist()), set(pi.tolist())
    for i, p in enumerate(truth):
        colour = (40, 170, 40) if i in hit_t else (230, 190, 0)
        cv2.circle(rgb, at(p), ring, colour, 2, cv2.LINE_AA)
    for i, p in enumerate(coords):
        colour = (0, 150, 230) if i in hit_p else (220, 30, 30)
        cv2.drawMarker(rgb, at(p), colour, cv2.MARKER_CROSS, max(ring, 8), 2)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return out
