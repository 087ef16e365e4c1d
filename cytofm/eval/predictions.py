"""Per-seed test predictions of a result, kept beside its JSON for paired comparisons.

A result JSON holds metrics; comparing two backbones on the same test rows needs their
predictions. Each evaluation job writes ``<protocol>.predictions.npz`` (MIL: ``abmil/
predictions.npz``): the test labels, their groups (patients), and per result block (one label
budget: all labels, k shots, a data share) the (seeds, n_test, n_classes) probabilities, in the
order of the JSON's blocks and runs. Probabilities are stored as float32.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

__all__ = ["block_key", "load_predictions", "save_predictions"]


def block_key(shots=None, fraction=None) -> str:
    """The key of a result block: ``all``, ``shots=4`` or ``fraction=0.25``."""
    if fraction is not None:
        return f"fraction={float(fraction):g}"
    if shots is not None:
        return f"shots={int(shots)}"
    return "all"


def save_predictions(
    path: str | Path,
    y_test: np.ndarray,
    groups: np.ndarray | None,
    blocks: dict[str, list[np.ndarray]],
) -> Path:
    """Write atomically (a half-written file never has the final name)."""
    path = Path(path)
    arrays = {"y_test": np.asarray(y_test, np.int64)}
    if groups is not None:
        arrays["groups"] = np.asarray(groups).astype(str)
    for key, probas in blocks.items():
        arrays[f"proba/{key}"] = np.stack(probas).astype(np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path


def load_predictions(path: str | Path) -> dict:
    """``{"y_test", "groups" (or None), "blocks": {key: [proba per seed]}}``."""
    with np.load(path, allow_pickle=False) as z:
        blocks = {k.split("/", 1)[1]: list(z[k]) for k in z.files if k.startswith("proba/")}
        groups = z["groups"] if "groups" in z.files else None
        return {"y_test": z["y_test"], "groups": groups, "blocks": blocks}
