"""Does pretraining help? The evaluation's linear probe on frozen features, pretrained vs.
random weights.

Both backbones share the architecture; the random one is initialised by timm with each seed.
Features are the [CLS]/pooled outputs. The probe is the evaluation harness's own linear
protocol: the split of the task that evaluates the dataset (grouped, and the test rows those
pretraining leaves out), logistic regression with C chosen on its validation rows
(:func:`cytofm.eval.linear.fit_linear`), balanced accuracy on its test rows.
"""

from __future__ import annotations

import numpy as np
import torch

from cytofm.config import LinearConfig
from cytofm.eval.linear import fit_linear, full_proba, select_score
from cytofm.eval.splits import Split, make_split
from cytofm.ssl.export import load_backbone, read_backbone_config
from cytofm.ssl.monitor import embed

__all__ = ["linear_probe", "random_like", "ssl_vs_random"]


def random_like(model_dir, seed: int = 0) -> torch.nn.Module:
    """The exported architecture with timm's random initialisation (no weights loaded)."""
    import timm

    cfg = read_backbone_config(model_dir)
    torch.manual_seed(seed)
    return timm.create_model(
        cfg["architecture"], pretrained=False, num_classes=0, **cfg["model_args"]
    ).eval()


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    split: Split,
    classes: list[str],
    linear: LinearConfig,
    metric: str = "balanced_accuracy",
) -> tuple[float, float]:
    """(test balanced accuracy, chosen C) of the evaluation's linear protocol."""
    clf, C, _ = fit_linear(
        features[split.train],
        labels[split.train],
        features[split.val],
        labels[split.val],
        Cs=list(linear.Cs),
        class_names=classes,
        metric=metric,
        max_iter=linear.max_iter,
    )
    proba = full_proba(clf, features[split.test], len(classes))
    return select_score(labels[split.test], proba, "balanced_accuracy", classes), float(C)


def ssl_vs_random(
    model_dir,
    images: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    seeds=(0, 1, 2),
    *,
    split: Split | None = None,
    classes: list[str] | None = None,
    linear: LinearConfig | None = None,
    metric: str = "balanced_accuracy",
) -> dict:
    """Balanced accuracy of the linear probe for the pretrained backbone and random ones (one
    per seed) on the same split (default: the evaluation's derived grouped 60/20/20 split)."""
    labels = np.asarray(labels).astype(np.int64)
    split = split or make_split(labels, groups)
    classes = classes or [str(c) for c in range(int(labels.max()) + 1)]
    linear = linear or LinearConfig()
    cfg = read_backbone_config(model_dir)
    pc = cfg["pretrained_cfg"]
    size = pc["input_size"][-1]
    f_ssl = embed(load_backbone(model_dir), images, pc["mean"], pc["std"], size, "cpu").numpy()
    ssl_score, ssl_c = linear_probe(f_ssl, labels, split, classes, linear, metric)
    results = {"ssl": [], "random": [], "C": {"ssl": ssl_c, "random": []}, "seeds": list(seeds)}
    for seed in seeds:
        model = random_like(model_dir, seed)
        f_rnd = embed(model, images, pc["mean"], pc["std"], size, "cpu").numpy()
        score, c = linear_probe(f_rnd, labels, split, classes, linear, metric)
        results["ssl"].append(ssl_score)  # the pretrained features do not depend on the seed
        results["random"].append(score)
        results["C"]["random"].append(c)
    for key in ("ssl", "random"):
        results[f"{key}_mean"] = float(np.mean(results[key]))
        results[f"{key}_std"] = float(np.std(results[key]))
    results["margin"] = results["ssl_mean"] - results["random_mean"]
    results["n_images"] = len(labels)
    results["n_classes"] = len(classes)
    results["chance"] = 1.0 / len(classes)
    results["split"] = split.to_dict()
    results["protocol"] = "linear (the evaluation's: C chosen on validation, test rows scored)"
    return results
