"""Does pretraining help? Linear probe on frozen features: pretrained vs. random weights.

Both backbones share the architecture; the random one is initialised by timm with a fixed
seed. Features are the [CLS]/pooled outputs; a logistic regression is fitted on a group-wise
split (crops sharing a stain group never straddle train and test) and scored by balanced
accuracy on the held-out part.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cytofm.ssl.export import load_backbone, read_backbone_config
from cytofm.ssl.monitor import embed
from cytofm.store import as_str_array

__all__ = ["linear_probe", "random_like", "ssl_vs_random"]


def random_like(model_dir, seed: int = 0) -> torch.nn.Module:
    """The exported architecture with timm's random initialisation (no weights loaded)."""
    import timm

    cfg = read_backbone_config(model_dir)
    torch.manual_seed(seed)
    return timm.create_model(
        cfg["architecture"], pretrained=False, num_classes=0, **cfg["model_args"]
    ).eval()


def _split(labels: np.ndarray, groups: np.ndarray, seed: int):
    """Half/half split, stratified by label and, when groups are given, grouped (no group in
    both halves): StratifiedGroupKFold with two folds, first fold held out."""
    groups = as_str_array(groups)
    labels = np.asarray(labels)
    if len(np.unique(groups)) >= 4 and not (groups == "").all():
        folds = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed)
        return next(folds.split(labels, labels, groups))
    folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
    return next(folds.split(labels, labels))


def linear_probe(features: np.ndarray, labels: np.ndarray, train, test) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(features[train], labels[train])
    return float(balanced_accuracy_score(labels[test], clf.predict(features[test])))


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
        train, test = _split(labels, groups, seed)
        results["ssl"].append(linear_probe(f_ssl, labels, train, test))
        results["random"].append(linear_probe(f_rnd, labels, train, test))
    for key in ("ssl", "random"):
        results[f"{key}_mean"] = float(np.mean(results[key]))
        results[f"{key}_std"] = float(np.std(results[key]))
    results["margin"] = results["ssl_mean"] - results["random_mean"]
    results["n_images"] = len(labels)
    results["n_classes"] = int(len(np.unique(labels)))
    results["chance"] = 1.0 / results["n_classes"]
    return results
