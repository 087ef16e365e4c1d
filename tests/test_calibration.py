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


def test_conformal_sets_reach_their_coverage_on_exchangeable_items():
    rng = np.random.default_rng(2)
    covered, sizes = [], []
    for _ in range(20):
        y_val, p_val = _overconfident(rng, 300)
        y_test, p_test = _overconfident(rng, 300)
        q = conformal_threshold(y_val, p_val, 0.1)
        sets = p_test >= 1 - q - 1e-12
        covered.append(sets[np.arange(len(y_test)), y_test].mean())
        sizes.append(sets.sum(1).mean())
    assert np.mean(covered) >= 0.88  # >= 0.9 in expectation; 20 x 300 items
    assert 1.0 < np.mean(sizes) < 4.0  # sets are informative
    # too few validation items for 95%: every class
    assert conformal_threshold(np.zeros(5, int), np.full((5, 3), 1 / 3), 0.05) == 1.0


def test_summary_has_intervals_and_the_conformal_part_only_with_validation():
    rng = np.random.default_rng(3)
    y_val, _ = _overconfident(rng, 400)
    seeds = [_overconfident(rng, 400) for _ in range(3)]
    y_test = seeds[0][0]
    probas = [_overconfident(np.random.default_rng(s), 400)[1] for s in range(3)]
    vals = [_overconfident(np.random.default_rng(10 + s), 400)[1] for s in range(3)]
    temps = [fit_temperature(y_val, v) for v in vals]
    scaled = [apply_temperature(p, t) for p, t in zip(probas, temps, strict=True)]
    out = summarise_calibration(
        y_test, probas, scaled, temps, y_val=y_val, val_probas=vals, alpha=0.1, n_boot=200
    )
    assert {"ece", "ece_scaled", "nll", "nll_scaled", "coverage", "set_size", "temperature"} <= set(
        out
    )
    for name in ("ece", "coverage"):
        assert out[name]["ci95"][0] <= out[name]["mean"] <= out[name]["ci95"][1]
    assert out["temperature"]["range"] == [min(temps), max(temps)]
    bare = summarise_calibration(y_test, probas, n_boot=50)
    assert set(bare) == {"ece", "nll"}
