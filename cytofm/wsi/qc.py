"""QC thumbnails: the slide with its foreground mask and tile grid (and cells) drawn on it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["draw_qc"]


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
) -> Path:
    """Write a PNG: mask outline in green, kept tiles in blue, optional points in red.

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
    tint = img.copy()
    tint[m > 0] = (0.6 * tint[m > 0] + 0.4 * np.array([80, 200, 80])).astype(np.uint8)
    img = tint
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, (0, 140, 0), 1)
    f = slide_mpp / thumb_mpp * scale  # level-0 px -> drawing px
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(
            img, (int(x0 * f), int(y0 * f)), (int(x1 * f) - 1, int(y1 * f) - 1), (200, 90, 0), 1
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
