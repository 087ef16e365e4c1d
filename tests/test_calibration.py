"""Calibration: temperature scaling, ECE, reliability bins and split-conformal sets."""

from __future__ import annotations

import numpy as np
import pytest

from cytofm.eval.calibration import (
    apply_temperature,
    conformal_threshold,
    ece,
    fit_temperature,
    reliability,
    summarise_calibration,
)


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _overconfident(rng, n, k=4, sharpen=2.5):
    """Labels drawn from softmax(z), and a model reporting softmax(sharpen * z)."""
    z = rng.normal(scale=1.5, size=(n, k))
    truth = _softmax(z)
    y = np.array([rng.choice(k, p=p) for p in truth])
    return y, _softmax(sharpen * z)


def test_temperature_undoes_a_known_overconfidence_and_lowers_ece():
    rng = np.random.default_rng(0)
    y_val, p_val = _overconfident(rng, 3000)
    y_test, p_test = _overconfident(rng, 3000)
    t = fit_temperature(y_val, p_val)
    assert t == pytest.approx(2.5, rel=0.1)
    scaled = apply_temperature(p_test, t)
    assert (scaled.argmax(1) == p_test.argmax(1)).all()  # never changes the prediction
    assert ece(y_test, p_test) > 0.1 > 0.03 > ece(y_test, scaled)
    assert np.allclose(apply_temperature(p_test, 1.0), p_test)


def test_temperature_is_one_without_validation_items():
    assert fit_temperature(np.zeros(0, int), np.zeros((0, 3))) == 1.0


def test_ece_is_the_weighted_gap_of_the_bins():
    rng = np.random.default_rng(1)
    y, p = _overconfident(rng, 500)
    r = reliability(y, p)
    seen = r["count"] > 0
    manual = np.sum(r["count"][seen] * np.abs(r["accuracy"][seen] - r["confidence"][seen]))
    assert ece(y, p) == pytest.approx(manual / len(y))
    # resample weights: unit weights give the same, and a doubled half counts twice
    w = np.ones((2, len(y)))
    w[1, : len(y) // 2] = 2
    both = ece(y, p, w)
    assert both[0] == pytest.approx(ece(y, p))
    idx = np.concatenate([np.arange(len(y)), np.arange(len(y) // 2)])
    assert both[1] == pytest.approx(ece(y[idx], p[idx]))


def _calibrated(rng, n, k=4):
    """A calibrated model: probabilities p drawn first, then each label from its own p."""
    p = _softmax(rng.normal(scale=1.5, size=(n, k)))
    y = (rng.random((n, 1)) > np.cumsum(p, 1)).sum(1)
    return y, p


def test_conformal_threshold_is_the_right_order_statistic():
    # 240 distinct scores 1 - p(true class): for alpha 0.1 the rank is ceil(241 x 0.9) = 217
    rng = np.random.default_rng(5)
    scores = rng.permutation(np.linspace(0.01, 0.95, 240))
    y = rng.integers(0, 3, 240)
    p = np.full((240, 3), 0.0)
    p[np.arange(240), y] = 1 - scores
    p[np.arange(240), (y + 1) % 3] = scores
    assert conformal_threshold(y, p, 0.1) == pytest.approx(np.sort(scores)[216])
    # too few calibration items for 95%: every class
    assert conformal_threshold(np.zeros(5, int), np.full((5, 3), 1 / 3), 0.05) == 1.0


def test_conformal_coverage_of_a_calibrated_model_is_within_its_nominal_level():
    # split conformal with n calibration items covers between 1 - alpha and
    # 1 - alpha + 1 / (n + 1) on average; with n = 20 that is [0.900, 0.948): one rank
    # too high would give 20 / 21 = 0.952
    rng = np.random.default_rng(2)
    covered, sizes = [], []
    for _ in range(400):
        y_cal, p_cal = _calibrated(rng, 20)
        y_test, p_test = _calibrated(rng, 200)
        q = conformal_threshold(y_cal, p_cal, 0.1)
        sets = p_test >= 1 - q - 1e-12
        covered.append(sets[np.arange(len(y_test)), y_test].mean())
        sizes.append(sets.sum(1).mean())
    assert 0.893 <= np.mean(covered) <= 0.925
    assert 1.0 < np.mean(sizes) < 4.0  # sets are informative


def test_summary_intervals_cover_the_truth_and_the_conformal_part_needs_calibration_rows():
    # three "seeds": models that agree on the label-generating logits z up to small noise;
    # labels, calibration rows and test rows are drawn together from the same model
    rng = np.random.default_rng(3)
    z = rng.normal(scale=1.5, size=(1200, 4))
    y = (rng.random((1200, 1)) > np.cumsum(_softmax(z), 1)).sum(1)
    cal, val, test = np.arange(0, 400), np.arange(400, 800), np.arange(800, 1200)
    models = [_softmax(2.0 * (z + 0.1 * rng.normal(size=z.shape))) for _ in range(3)]
    temps = [fit_temperature(y[val], m[val]) for m in models]
    probas = [m[test] for m in models]
    scaled = [apply_temperature(p, t) for p, t in zip(probas, temps, strict=True)]
    out = summarise_calibration(
        y[test], probas, scaled, temps, y_calib=y[cal], calib_probas=[m[cal] for m in models],
        alpha=0.1, n_boot=300,
    )  # fmt: skip
    assert {"ece", "ece_scaled", "nll", "nll_scaled", "coverage", "set_size", "temperature"} <= set(
        out
    )
    # the models are overconfident by 2x: scaling finds T near 2 and removes most of the ECE
    assert 1.5 < out["temperature"]["mean"] < 2.6
    assert out["ece_scaled"]["ci95"][1] < out["ece"]["ci95"][0]
    # 400 test items: the coverage interval is a few points wide and holds the nominal 0.9
    lo, hi = out["coverage"]["ci95"]
    assert 0.02 < hi - lo < 0.12
    assert lo <= 0.9 <= hi
    assert out["temperature"]["range"] == [min(temps), max(temps)]
    bare = summarise_calibration(y[test], probas, n_boot=50)
    assert set(bare) == {"ece", "nll"}
