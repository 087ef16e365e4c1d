import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from cytofm.eval.metrics import (
    _fast_scalars,
    _resample_weights,
    _scalars,
    _weighted_scalars,
    classification_metrics,
    macro_auroc,
    paired_difference,
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


@pytest.mark.parametrize("groups", [None, np.arange(60) // 4])
def test_weighted_resamples_equal_scoring_the_resampled_rows(groups):
    """The batched bootstrap scores a resample given as draw counts exactly as scikit-learn
    scores the rows it stands for (ties, duplicated rows and absent classes included)."""
    y, p = _predictions(n=60, seed=7, drop_class=1)
    p = np.round(p, 1)
    weights = _resample_weights(len(y), groups, 40, np.random.default_rng(3))
    scored = _weighted_scalars(y, p, weights)
    for b, w in enumerate(weights):
        rows = np.repeat(np.arange(len(y)), w.astype(int))
        ref = _scalars(y[rows], p[rows])
        for key in ref:
            assert scored[key][b] == pytest.approx(ref[key], abs=1e-12, nan_ok=True), key


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
    assert bal["std"] == pytest.approx(np.std(per_seed, ddof=1))
    lo, hi = bal["ci95"]
    t_lo, t_hi = bal["ci95_test_only"]
    # two very different seeds: the interval is far wider than the test rows alone make it
    assert 0 <= lo < t_lo < bal["mean"] < t_hi < hi <= 1
    assert t_hi - t_lo < 0.2
    again = summarise(y, [p1, p2], n_boot=200, seed=0)
    assert again["balanced_accuracy"]["ci95"] == bal["ci95"]  # deterministic


def _seed_varied_results(rng, mu, sigma, n_seeds, n_test, y=None):
    """Binary predictions whose accuracy is mu + a seed effect of std sigma: seed s is right on
    each test row with probability mu + delta_s (the expected accuracy over seeds is mu)."""
    y = rng.integers(0, 2, n_test) if y is None else y
    probas = []
    for _ in range(n_seeds):
        p_right = np.clip(mu + rng.normal(0, sigma), 0, 1)
        right = rng.random(n_test) < p_right
        pred = np.where(right, y, 1 - y)
        conf = 0.5 + 0.5 * rng.random(n_test)
        proba = np.zeros((n_test, 2))
        proba[np.arange(n_test), pred] = conf
        proba[np.arange(n_test), 1 - pred] = 1 - conf
        probas.append(proba)
    return y, probas


def test_interval_covers_the_expected_value_under_seed_variance():
    """Known seed variance (std 0.06 across 3 seeds, as on PBC at 1 shot): the 95% interval
    covers the expected accuracy in at least 90% of repeats, where the test-rows-only
    bootstrap (the former interval) misses it far more often."""
    rng = np.random.default_rng(7)
    mu, hits, hits_test_only, repeats = 0.7, 0, 0, 60
    for r in range(repeats):
        y, probas = _seed_varied_results(rng, mu, 0.06, 3, 300)
        acc = summarise(y, probas, n_boot=100, seed=r)["accuracy"]
        hits += acc["ci95"][0] <= mu <= acc["ci95"][1]
        hits_test_only += acc["ci95_test_only"][0] <= mu <= acc["ci95_test_only"][1]
    assert hits / repeats >= 0.9
    assert hits_test_only / repeats <= 0.8


def test_grouped_bootstrap_widens_the_interval_when_groups_share_errors():
    """Rows of one patient that are all right or all wrong carry less information than as
    many independent rows: resampling patients makes the interval wider."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(30), 10)
    y = rng.integers(0, 2, 300)
    right = np.repeat(rng.random(30) < 0.7, 10)
    pred = np.where(right, y, 1 - y)
    proba = np.eye(2)[pred] * 0.8 + 0.1
    rows = summarise(y, [proba], n_boot=300)["accuracy"]
    grouped = summarise(y, [proba], n_boot=300, groups=groups)["accuracy"]
    width = lambda s: s["ci95"][1] - s["ci95"][0]  # noqa: E731
    assert grouped["resampled"] == "groups" and rows["resampled"] == "rows"
    assert width(grouped) > 2 * width(rows)


def test_paired_difference_finds_a_real_gap_and_not_a_null_one():
    rng = np.random.default_rng(11)
    y, better = _seed_varied_results(rng, 0.85, 0.01, 3, 400)
    _, worse = _seed_varied_results(rng, 0.65, 0.01, 3, 400, y)
    d = paired_difference(y, better, worse, n_boot=300)["accuracy"]
    assert d["difference"] == pytest.approx(0.2, abs=0.06)
    assert d["excludes_zero"] and d["p_value"] < 0.01 and d["ci95"][0] > 0
    _, same = _seed_varied_results(rng, 0.85, 0.01, 3, 400, y)
    null = paired_difference(y, better, same, n_boot=300)["accuracy"]
    assert abs(null["difference"]) < 0.05 and null["p_value"] > 0.05
    # identical predictions: no difference, p = 1
    same_again = paired_difference(y, better, better, n_boot=50)["accuracy"]
    assert same_again["difference"] == 0 and same_again["p_value"] == 1.0
    assert not same_again["excludes_zero"]


def test_paired_difference_false_positive_rate_is_near_nominal():
    rng = np.random.default_rng(5)
    false_pos = 0
    for r in range(40):
        y, a = _seed_varied_results(rng, 0.75, 0.03, 3, 300)
        _, b = _seed_varied_results(rng, 0.75, 0.03, 3, 300, y)
        false_pos += paired_difference(y, a, b, n_boot=60, seed=r)["accuracy"]["excludes_zero"]
    assert false_pos / 40 <= 0.1


def test_paired_interval_and_p_value_agree():
    """One t statistic gives both: the CI excludes zero exactly when p < 0.05."""
    rng = np.random.default_rng(2)
    for gap in (0.0, 0.03, 0.06, 0.1):
        y, a = _seed_varied_results(rng, 0.7 + gap, 0.03, 3, 200)
        _, b = _seed_varied_results(rng, 0.7, 0.03, 3, 200, y)
        d = paired_difference(y, a, b, n_boot=80)["accuracy"]
        assert d["excludes_zero"] == (d["p_value"] < 0.05), d
        lo, hi = d["ci95"]
        assert lo < d["difference"] < hi
