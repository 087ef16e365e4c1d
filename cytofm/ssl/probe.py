"""Does pretraining help? Linear probe on frozen features: pretrained vs. random weights.

Both backbones share the architecture; the random one is initialised by timm with a fixed
seed. Features are the [CLS]/pooled outputs. The probe is the evaluation's own: its grouped
train/val/test split (crops sharing a stain group never straddle parts), its logistic regression
with C chosen on validation, balanced accuracy on test; one split per seed.
"""

from __future__ import annotations

import numpy as np
import torch

from cytofm.eval.linear import fit_linear, full_proba, select_score
from cytofm.eval.splits import Split, make_split
from cytofm.ssl.export import load_backbone, read_backbone_config
from cytofm.ssl.monitor import embed
from cytofm.store import as_str_array

__all__ = ["linear_probe", "random_like", "ssl_vs_random"]

PROBE_CS = (0.001, 0.01, 0.1, 1.0, 10.0)  # the evaluation's default grid (evaluate.linear_Cs)


def random_like(model_dir, seed: int = 0) -> torch.nn.Module:
    """The exported architecture with timm's random initialisation (no weights loaded)."""
    import timm

    cfg = read_backbone_config(model_dir)
    torch.manual_seed(seed)
    return timm.create_model(
        cfg["architecture"], pretrained=False, num_classes=0, **cfg["model_args"]
    ).eval()


def _probe_split(labels: np.ndarray, groups: np.ndarray, seed: int) -> Split:
    """The evaluation's train/val/test split (60/20/20, grouped by slide or patient when every
    row has a group), one per seed."""
    groups = as_str_array(groups)
    return make_split(labels, None if (groups == "").all() else groups, seed=seed)


def linear_probe(features: np.ndarray, labels: np.ndarray, split: Split, Cs=PROBE_CS) -> float:
    """The evaluation's linear probe (:func:`cytofm.eval.linear.fit_linear`: standardised
    logistic regression, C chosen on the validation rows): balanced accuracy on the test rows."""
    names = [str(c) for c in np.unique(labels)]
    y = np.searchsorted(np.unique(labels), labels)
    clf, _, _ = fit_linear(
        features[split.train],
        y[split.train],
        features[split.val],
        y[split.val],
        Cs=list(Cs),
        class_names=names,
    )
    proba = full_proba(clf, features[split.test], len(names))
    return select_score(y[split.test], proba, "balanced_accuracy", names)


def ssl_vs_random(
    model_dir, images: np.ndarray, labels: np.ndarray, groups: np.ndarray, seeds=(0, 1, 2)
) -> dict:
    """Balanced accuracy of the linear probe for the pretrained and a random backbone."""
    cfg = read_backbone_config(model_dir)
    pc = cfg["pretrained_cfg"]
    size = pc["input_size"][-1]
    ssl_model = load_backbone(model_dir)
    f_ssl = embed(ssl_model, images, pc["mean"], pc["std"], size, "cpu").numpy()
    results = {"ssl": [], "random": [], "seeds": list(seeds)}
    for seed in seeds:
        f_rnd = embed(
            random_like(model_dir, seed), images, pc["mean"], pc["std"], size, "cpu"
        ).numpy()
        split = _probe_split(labels, groups, seed)
        results["ssl"].append(linear_probe(f_ssl, labels, split))
        results["random"].append(linear_probe(f_rnd, labels, split))
    for key in ("ssl", "random"):
        results[f"{key}_mean"] = float(np.mean(results[key]))
        results[f"{key}_std"] = float(np.std(results[key]))
    results["margin"] = results["ssl_mean"] - results["random_mean"]
    results["n_images"] = len(labels)
    results["n_classes"] = int(len(np.unique(labels)))
    results["chance"] = 1.0 / results["n_classes"]
    return results
