"""Per-seed test predictions of a result, kept beside its JSON for paired comparisons.

A result JSON holds metrics; comparing two backbones on the same test rows needs their
predictions. Each evaluation job writes ``<protocol>.predictions.npz`` (MIL: ``abmil/
predictions.npz``): the test labels, their groups (patients), and per result block (one label
budget: all labels, k shots, a data share) the (seeds, n_test, n_classes) probabilities, in the
order of the JSON's blocks and runs. Probabilities are stored as float32. Beside them: the test
probabilities after temperature scaling and the temperatures, and the validation rows'
probabilities they were fitted on, the conformal calibration rows' probabilities (see
:mod:`cytofm.eval.calibration`), the dataset rows tested and each block's run seeds.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

__all__ = [
    "LONG_COLUMNS",
    "block_key",
    "load_predictions",
    "long_rows",
    "predictions_path",
    "result_blocks",
    "run_seeds",
    "save_predictions",
]


def run_seeds(block: dict) -> list[int]:
    """The seed of each run of a result block, in order (-1 for a seed-independent run)."""
    return [-1 if r.get("seed") is None else int(r["seed"]) for r in block["runs"]]


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
    *,
    calibrated: dict[str, list[np.ndarray]] | None = None,
    temperatures: dict[str, list] | None = None,
    y_val: np.ndarray | None = None,
    val: dict[str, list[np.ndarray]] | None = None,
    y_calib: np.ndarray | None = None,
    calib: dict[str, list[np.ndarray]] | None = None,
    test_rows: np.ndarray | None = None,
    seeds: dict[str, list] | None = None,
) -> Path:
    """Write atomically (a half-written file never has the final name). ``calibrated``: the
    test probabilities after temperature scaling, per block (the ``temperatures`` fitted per
    seed, or per seed and fold); ``val``: the validation rows' probabilities (``y_val``) of
    the models kept, per block; ``calib``: the conformal calibration rows' (``y_calib``);
    ``test_rows``: the dataset rows tested, in order, and ``seeds`` each block's run seeds
    (comparisons pair results on both)."""
    path = Path(path)
    arrays = {"y_test": np.asarray(y_test, np.int64)}
    if groups is not None:
        arrays["groups"] = np.asarray(groups).astype(str)
    for name, value in (("y_val", y_val), ("y_calib", y_calib), ("test_rows", test_rows)):
        if value is not None:
            arrays[name] = np.asarray(value, np.int64)
    parts = (("proba", blocks), ("calibrated", calibrated), ("val", val), ("calib", calib))
    for prefix, part in parts:
        for key, probas in (part or {}).items():
            arrays[f"{prefix}/{key}"] = np.stack(probas).astype(np.float32)
    for key, temps in (temperatures or {}).items():
        arrays[f"temperature/{key}"] = np.asarray(temps, np.float64)
    for key, values in (seeds or {}).items():
        arrays[f"seeds/{key}"] = np.asarray(values, np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path


def load_predictions(path: str | Path) -> dict:
    """``{"y_test", "groups" (or None), "blocks": {key: [proba per seed]}}``, and where the
    file has them ``"calibrated"``, ``"val"``, ``"calib"`` (the same layout),
    ``"temperatures"`` and ``"seeds"`` (key -> array), ``"y_val"``, ``"y_calib"`` and
    ``"test_rows"`` (else empty / None)."""
    with np.load(path, allow_pickle=False) as z:

        def part(prefix: str, as_list: bool = True) -> dict:
            return {
                k.split("/", 1)[1]: list(z[k]) if as_list else z[k]
                for k in z.files
                if k.startswith(f"{prefix}/")
            }

        def optional(name: str):
            return z[name] if name in z.files else None

        return {
            "y_test": z["y_test"],
            "groups": optional("groups"),
            "blocks": part("proba"),
            "calibrated": part("calibrated"),
            "val": part("val"),
            "calib": part("calib"),
            "temperatures": part("temperature", as_list=False),
            "seeds": part("seeds", as_list=False),
            "y_val": optional("y_val"),
            "y_calib": optional("y_calib"),
            "test_rows": optional("test_rows"),
        }


def predictions_path(result_json: str | Path) -> Path:
    """Where the job that wrote ``result_json`` put its predictions."""
    path = Path(result_json)
    if path.name == "abmil.json":
        return path.with_suffix("") / "predictions.npz"
    return path.with_name(f"{path.stem}.predictions.npz")


def result_blocks(result_jsons):
    """(result, block, block key, loaded predictions) of every result block whose job kept
    its predictions (results written by older versions have none and are passed over); each
    file is read once."""
    from cytofm.results import read_result

    for path in result_jsons:
        res, preds = read_result(path), predictions_path(path)
        if not preds.is_file():
            continue
        pred = load_predictions(preds)
        for block in res["results"]:
            key = block_key(block.get("shots"), block.get("fraction"))
            if key in pred["blocks"]:
                yield res, block, key, pred


LONG_COLUMNS = [
    "task", "backbone", "backbone_kind", "protocol", "block", "metric",
    "mean", "std", "ci95_low", "ci95_high", "n_seeds",
]  # fmt: skip


def long_rows(res: dict, key: str, metrics: dict) -> list[dict]:
    """Rows of a long metrics table (``LONG_COLUMNS``) for one result block: ``metrics`` maps a
    name to its summary (mean, std, ``ci95`` or ``range``, n_seeds)."""
    rows = []
    for name, m in metrics.items():
        low, high = m.get("ci95", m.get("range"))
        rows.append(
            {
                "task": res["task"],
                "backbone": res["backbone"],
                "backbone_kind": res.get("backbone_kind", ""),
                "protocol": res["protocol"],
                "block": key,
                "metric": name,
                "mean": m["mean"],
                "std": m["std"],
                "ci95_low": low,
                "ci95_high": high,
                "n_seeds": m["n_seeds"],
            }
        )
    return rows
