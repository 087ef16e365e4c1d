"""The slide-level model a lab keeps: attention MIL trained on every labelled slide of a task,
saved as safetensors with a JSON card, and applied to slides without a label.

The final model uses what the cross-validation settled: the same training arguments, and as
many epochs as the folds' early stopping chose (the median best epoch). One model is trained
per seed of the task on all its slides; a prediction is their mean (probabilities and
attention). The card records what a slide's features must match to be scored by it: the
backbone's architecture and weights checksum, its preprocessing and the patch geometry. A
feature store that differs is refused with both named, never scored silently.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cytofm.errors import InputDataError
from cytofm.store import open_store

if TYPE_CHECKING:
    from cytofm.config import MilConfig
    from cytofm.eval.mil_cv import Heatmap

__all__ = [
    "CARD_FILE",
    "MODEL_FILE",
    "feature_signature",
    "final_epochs",
    "load_mil_model",
    "predict_bag",
    "save_mil_model",
    "score_slide",
    "train_final_models",
]

log = logging.getLogger(__name__)

MODEL_FILE, CARD_FILE = "model.safetensors", "model.json"
CARD_FORMAT = 1


def feature_signature(features_store: str | Path, instances_store: str | Path) -> dict[str, Any]:
    """What a model's inputs depend on: the backbone that made the features (architecture,
    weights checksum), its preprocessing, and the patches' size in um and px (and so mpp)."""
    fattrs = dict(open_store(features_store).attrs)
    prov = fattrs.get("provenance") or {}
    ident = prov.get("backbone") or {}
    inst = dict(open_store(instances_store).attrs)
    return {
        "backbone": fattrs.get("backbone"),
        "architecture": ident.get("architecture"),
        "weights_sha256": ident.get("weights_sha256"),
        "preprocessing": prov.get("preprocessing"),
        "dim": fattrs.get("dim"),
        "patch_um": inst.get("patch_um", inst.get("tile_um")),
        "patch_px": inst.get("patch_px", inst.get("tile_px")),
        "mpp": inst.get("mpp", inst.get("tile_mpp")),
    }


def final_epochs(folds: Sequence[Mapping[str, Any]], max_epochs: int) -> int:
    """Epochs of the final model: the median over folds of the epoch early stopping kept
    (best epoch + 1); ``max_epochs`` where no fold had a validation split."""
    best = [int(f["best_epoch"]) + 1 for f in folds if int(f.get("best_epoch", -1)) >= 0]
    return int(np.median(best)) if best else int(max_epochs)


def train_final_models(
    bags: Sequence[np.ndarray],
    y: np.ndarray,
    n_classes: int,
    seeds: Sequence[int],
    epochs: int,
    mil: MilConfig,
):
    """One model per seed on every bag with the settings of ``mil``, ``epochs`` epochs (no
    validation split left)."""
    from cytofm.eval.mil import train_mil

    final = mil.updated({"max_epochs": epochs, "min_epochs": 0})
    everything = np.arange(len(bags))
    return [
        train_mil(bags, y, everything, everything[:0], n_classes, final, seed=int(s))[0]
        for s in seeds
    ]


def save_mil_model(out_dir: str | Path, models, card: Mapping[str, Any]) -> Path:
    """``model.safetensors`` (every seed's weights, keys ``seed<i>.<name>``) and
    ``model.json`` (the card, with the weights' checksum) in ``out_dir``."""
    from safetensors.torch import save_file

    from cytofm.provenance import file_sha256

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"seed{i}.{k}": v.detach().cpu().contiguous()
        for i, m in enumerate(models)
        for k, v in m.state_dict().items()
    }
    save_file(tensors, str(out_dir / MODEL_FILE))
    full = {"format": CARD_FORMAT, **card, "n_models": len(models)}
    full["weights_sha256"] = file_sha256(out_dir / MODEL_FILE)
    (out_dir / CARD_FILE).write_text(json.dumps(full, indent=1, default=str) + "\n")
    return out_dir


def load_mil_model(model_dir: str | Path):
    """(models, card) saved by :func:`save_mil_model`; the weights are checked against the
    card's checksum."""
    from safetensors.torch import load_file

    from cytofm.eval.mil import GatedABMIL
    from cytofm.provenance import file_sha256

    model_dir = Path(model_dir)
    card_path = model_dir / CARD_FILE
    if not card_path.is_file():
        raise InputDataError(
            f"{model_dir} holds no {CARD_FILE}: give the model folder a `mil` job wrote "
            "(results/eval/<task>/<backbone>/abmil/model)"
        )
    card = json.loads(card_path.read_text())
    if file_sha256(model_dir / MODEL_FILE) != card.get("weights_sha256"):
        raise InputDataError(
            f"{model_dir / MODEL_FILE} does not match the checksum in its card: the folder was "
            "changed after it was written; copy it again or rerun its `mil` job"
        )
    tensors = load_file(str(model_dir / MODEL_FILE))
    arch = card["architecture"]
    models = []
    for i in range(int(card["n_models"])):
        m = GatedABMIL(arch["in_dim"], len(card["classes"]), arch["hidden"], arch["attn_dim"],
                       arch["dropout"])  # fmt: skip
        prefix = f"seed{i}."
        m.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        m.eval()
        models.append(m)
    return models, card


def check_signature(card: Mapping[str, Any], signature: Mapping[str, Any], where: str) -> None:
    """Refuse features a model was not trained on, naming both sides."""
    keys = ("architecture", "weights_sha256", "preprocessing", "dim", "patch_um", "patch_px")
    want = card["features"]
    diff = [k for k in keys if want.get(k) != signature.get(k)]
    if diff:
        parts = "; ".join(
            f"{k}: model {want.get(k)!r}, features {signature.get(k)!r}" for k in diff
        )
        raise InputDataError(
            f"{where} was not made the way the model's training features were ({parts}). The "
            f"model of task '{card['task']}' expects features of backbone '{want.get('backbone')}'"
            " with the same weights, preprocessing and patch size: embed the slide with that "
            "backbone, or use a model trained on this one"
        )


def predict_bag(models, bag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the models of the class probabilities (C,) and attention (n,) of one bag."""
    from cytofm.eval.mil import predict_mil

    probs, attn = [], []
    for m in models:
        p, a = predict_mil(m, [bag], [0], 1)
        probs.append(p[0])
        attn.append(a[0])
    return np.mean(probs, 0), np.mean(attn, 0)


def score_slide(
    models, card, slide_id, features_store, instances_store, out_attention, out_heatmap,
    slide_path=None, mpp=None, thumbnail_mpp: float = 4.0,
) -> tuple[dict[str, Any], Heatmap]:  # fmt: skip
    """One slide through the final models: class probabilities, the predicted class and each
    cell's attention (``out_attention``: rows of the cell store, level-0 centres, attention),
    and the attention over the slide's thumbnail to draw as ``out_heatmap`` (no thumbnail, so
    a note, when there is no slide file or no cell). A slide without cells gets NaN
    probabilities and a warning."""
    from cytofm.eval.mil_cv import Heatmap, slide_thumbnail

    fs = open_store(features_store)
    feats = np.asarray(fs["features"][:], np.float32)
    rows = np.asarray(fs["rows"][:], np.int64)
    coords = np.asarray(open_store(instances_store)["coords"][:], float).reshape(-1, 2)[rows]
    classes, warning = list(card["classes"]), ""
    if len(feats) == 0:
        probs, attention = np.full(len(classes), np.nan), np.zeros(0)
        warning = f"slide '{slide_id}' has no cells: no prediction"
        log.warning(warning)
    else:
        probs, attention = predict_bag(models, feats)
    Path(out_attention).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out_attention, rows=rows, coords=coords, attention=attention.astype(np.float32))
    predicted = classes[int(np.argmax(probs))] if len(feats) else ""
    title = f"{slide_id}  {card['task']}: {predicted or 'no cells'}"
    thumb, down = None, 1.0
    if len(feats) and slide_path:
        title += f"  P={float(np.max(probs)):.2f}"
        thumb, down, _ = slide_thumbnail(slide_path, slide_id, mpp, thumbnail_mpp)
    heatmap = Heatmap(thumb, coords, attention, down, Path(out_heatmap), title)
    result = {
        "slide_id": slide_id,
        "task": card["task"],
        "backbone": card["backbone"],
        "classes": classes,
        "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
        "predicted": predicted,
        "n_cells": int(len(feats)),
        "warning": warning,
        "model": {
            "weights_sha256": card["weights_sha256"],
            "n_models": card["n_models"],
            "cross_validation_auroc": card["cross_validation"].get("auroc"),
        },
    }
    return result, heatmap
