"""Training schedules, precomputed as arrays indexed by global step (as in DINO/iBOT)."""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_schedule", "linear_warmup_then_constant"]


def cosine_schedule(
    start: float, end: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``start``, then cosine decay to ``end``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    warm = np.linspace(warmup_start, start, warmup_steps, endpoint=False)
    n = total_steps - warmup_steps
    t = np.arange(n) / max(n - 1, 1)
    decay = end + 0.5 * (start - end) * (1 + np.cos(np.pi * t))
    return np.concatenate([warm, decay]).astype(np.float64)


def linear_warmup_then_constant(
    start: float, end: float, warmup_steps: int, total_steps: int
) -> np.ndarray:
    """Teacher temperature: linear from ``start`` to ``end`` over warm-up, then ``end``."""
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    warm = np.linspace(start, end, warmup_steps, endpoint=False)
    return np.concatenate([warm, np.full(total_steps - warmup_steps, end)]).astype(np.float64)
