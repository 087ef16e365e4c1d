"""Pictures of where a MIL model looks: attention over the slide thumbnail, top-k cells.

:func:`draw_heatmap` and :func:`draw_montage` draw what :mod:`cytofm.eval.mil_cv` says a
slide's pictures show (its ``Heatmap`` and ``Montage``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cytofm.eval.mil_cv import Heatmap, Montage

__all__ = ["attention_heatmap", "draw_heatmap", "draw_montage", "top_cells_montage"]


def draw_heatmap(heatmap: Heatmap) -> None:
    """A slide's attention over its thumbnail (:func:`attention_heatmap`), or a note with the
    title when there is no thumbnail (no slide file, no cell)."""
    h = heatmap
    if h.thumbnail is None:
        _note(Path(h.out_png), h.title)
        return
    attention_heatmap(
        h.thumbnail, h.coords_px, h.attention, h.downsample, h.out_png, h.title,
        highlight_px=h.highlight_px, highlight_label=h.highlight_label,
    )  # fmt: skip


def draw_montage(montage: Montage) -> np.ndarray:
    """A slide's most attended cells (:func:`top_cells_montage`); returns their indices."""
    m = montage
    return top_cells_montage(m.images, m.attention, m.k, m.out_png)


def _note(out_png: Path, text: str) -> None:
    """A white PNG with one line of text, where a picture cannot be drawn."""
    import cv2

    img = np.full((120, 640, 3), 255, np.uint8)
    cv2.putText(img, text[:80], (10, 64), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), img)


def attention_heatmap(
    thumbnail: np.ndarray,
    coords_px: np.ndarray,
    attention: np.ndarray,
    downsample: float,
    out_png: str | Path,
    title: str = "",
    highlight_px: np.ndarray | None = None,
    highlight_label: str = "true abnormal cell",
) -> None:
    """Cells as dots on the thumbnail, coloured by attention relative to a uniform share.

    ``coords_px`` are level-0 cell centres (x, y); ``downsample`` maps level 0 to the thumbnail.
    The colour scale is attention x number of cells, so 1 means "an average cell".
    ``highlight_px`` (level-0 x, y), when given, are circled: for example the true abnormal
    cells, so a reader sees whether attention lands on them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rel = np.asarray(attention, dtype=float) * max(len(attention), 1)
    xy = np.asarray(coords_px, dtype=float) / downsample
    order = np.argsort(rel)  # most attended drawn last, on top
    h, w = thumbnail.shape[:2]
    fig, ax = plt.subplots(figsize=(6, 6 * h / max(w, 1) + 0.6))
    ax.imshow(thumbnail)
    sc = ax.scatter(
        xy[order, 0],
        xy[order, 1],
        c=rel[order],
        s=14,
        cmap="magma",
        norm=matplotlib.colors.LogNorm(vmin=max(rel.min(), 1e-2), vmax=max(rel.max(), 1.0)),
        edgecolors="none",
    )
    if highlight_px is not None and len(highlight_px):
        hl = np.asarray(highlight_px, dtype=float).reshape(-1, 2) / downsample
        ax.scatter(
            hl[:, 0],
            hl[:, 1],
            s=90,
            facecolors="none",
            edgecolors="#00a0ff",
            linewidths=1.2,
            label=highlight_label,
        )
        ax.legend(loc="lower right", fontsize=7, framealpha=0.8)
    fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02, label="attention x cells (1 = average cell)")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def top_cells_montage(
    images: np.ndarray, attention: np.ndarray, k: int, out_png: str | Path, cols: int = 8
) -> np.ndarray:
    """The ``k`` most attended cell patches, most attended first, as one PNG; returns indices."""
    import cv2

    k = min(k, len(images))
    top = np.argsort(-np.asarray(attention))[:k]
    p = images.shape[1]
    rows = int(np.ceil(k / cols)) if k else 1
    canvas = np.full((rows * (p + 2), cols * (p + 2), 3), 255, np.uint8)
    for n, i in enumerate(top):
        r, c = divmod(n, cols)
        canvas[r * (p + 2) + 1 : r * (p + 2) + 1 + p, c * (p + 2) + 1 : c * (p + 2) + 1 + p] = (
            images[i]
        )
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    return top
