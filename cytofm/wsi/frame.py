"""Dead lines at the frame of a field image.

Extended-depth-of-field composites and some camera exports end in one or two rows or columns of
near-black pixels (every Cervix93 frame has two at its bottom and right edges; some ISBI 2014
images one at the right). To a nucleus detector such a line is a string of the darkest
"chromatin" in the image: it gave a row of false nuclei along the border. A line at the frame in
which nearly every pixel is far darker than the image's typical (glass) level holds no
specimen; it is replaced by the nearest live line, so the image keeps its size and coordinates.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dead_frame", "mend_dead_frame"]

SIDES = ("top", "bottom", "left", "right")


def dead_frame(
    rgb: np.ndarray, darker: float = 0.35, share: float = 0.9, max_lines: int = 8
) -> dict[str, int]:
    """Dead lines per side: consecutive lines from the edge inward in which at least ``share``
    of the pixels are darker than ``darker`` x the image's median brightness (at most
    ``max_lines`` per side; real content never fills a whole line with nucleus-dark pixels)."""
    gray = rgb.mean(-1) if rgb.ndim == 3 else rgb.astype(np.float32)
    cut = darker * float(np.median(gray))
    edges = {
        "top": gray[:max_lines],
        "bottom": gray[::-1][:max_lines],
        "left": gray[:, :max_lines].T,
        "right": gray[:, ::-1][:, :max_lines].T,
    }
    out = {}
    for side, lines in edges.items():
        n = 0
        for line in lines:
            if np.mean(line < cut) < share:
                break
            n += 1
        out[side] = n
    return out


def mend_dead_frame(rgb: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """``rgb`` with its dead frame lines replaced by the nearest live line, and the counts per
    side (the input itself when there are none, or when the lines would cover the image)."""
    lines = dead_frame(rgb)
    h, w = rgb.shape[:2]
    t, b, left, r = (lines[s] for s in SIDES)
    if not any(lines.values()) or t + b >= h or left + r >= w:
        return rgb, dict.fromkeys(SIDES, 0)
    out = rgb.copy()
    if t:
        out[:t] = out[t]
    if b:
        out[h - b :] = out[h - b - 1]
    if left:
        out[:, :left] = out[:, left : left + 1]
    if r:
        out[:, w - r :] = out[:, w - r - 1 : w - r]
    return out, lines
