import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from cytofm.eval.metrics import (
    _fast_scalars,
    _scalars,
    classification_metrics,
    macro_auroc,
    summarise,
)


def _predictions(n=300, k=5, seed=0, drop_class=None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    if drop_class is not None:
        y[y == drop_class] = (drop_class + 1) % k
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def test_metrics_equal_scikit_learn():
    y, p = _predictions()
    m = classification_metrics(y, p, [f"c{i}" for i in range(5)])
    pred = p.argmax(1)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == len(y) and np.trace(cm) == (pred == y).sum()
    assert m["per_class_recall"]["c2"] == pytest.approx(cm[2, 2] / cm[2].sum())


@pytest.mark.parametrize("drop_class", [None, 3])
def test_fast_bootstrap_metrics_equal_reference(drop_class):
    for seed in range(5):
        y, p = _predictions(n=60, seed=seed, drop_class=drop_class)
        p = np.round(p, 2)  # ties in scores must be handled like scikit-learn
        fast, ref = _fast_scalars(y, p), _scalars(y, p)
        for key in ref:
            assert fast[key] == pytest.approx(ref[key], abs=1e-12), key


def test_auroc_with_a_missing_class_uses_present_classes():
    y, p = _predictions(drop_class=2)
    present = np.unique(y)
    expected = np.mean([roc_auc_score(y == c, p[:, c]) for c in present])
    assert macro_auroc(y, p) == pytest.approx(expected)
    assert np.isnan(macro_auroc(np.zeros(5, int), p[:5]))


def test_summary_mean_std_and_interval():
    y, p1 = _predictions(seed=1)
    _, p2 = _predictions(seed=1)
    p2 = np.roll(p2, 1, axis=1)  # a much worse second seed
    s = summarise(y, [p1, p2], n_boot=200, seed=0)
    bal = s["balanced_accuracy"]
    per_seed = [balanced_accuracy_score(y, p.argmax(1)) for p in (p1, p2)]
    assert bal["per_seed"] == pytest.approx(per_seed)
    assert bal["mean"] == pytest.approx(np.mean(per_seed))
    assert bal["std"] == pytest.approx(np.std(per_seed))
    lo, hi = bal["ci95"]
    assert lo < bal["mean"] < hi and hi - lo < 0.2
    again = summarise(y, [p1, p2], n_boot=200, seed=0)
    assert again["balanced_accuracy"]["ci95"] == bal["ci95"]  # deterministic
