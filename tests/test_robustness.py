"""The robustness index and the batch-leak probe on features with known structure."""

from __future__ import annotations

import numpy as np
import pytest

from cytofm.eval.robustness import batch_probe, neighbour_counts, robustness_index
from cytofm.eval.splits import make_split


def _features(rng, class_weight, batch_weight, n=600, dim=16):
    """Class and batch each shift the features along their own directions."""
    labels = rng.integers(0, 3, n)
    group = rng.integers(0, 60, n)
    batch, groups = group % 3, group.astype(str)  # a group's (slide's) site
    centres_c, centres_b = rng.normal(size=(3, dim)), rng.normal(size=(3, dim))
    x = class_weight * centres_c[labels] + batch_weight * centres_b[batch]
    return x + rng.normal(scale=0.5, size=(n, dim)), labels, batch, groups


@pytest.mark.parametrize(("cw", "bw", "low", "high"), [(2.0, 0.0, 0.9, 1.0), (0.3, 2.0, 0.0, 0.2)])
def test_index_is_high_when_biology_dominates_and_low_when_the_batch_does(cw, bw, low, high):
    x, y, batch, groups = _features(np.random.default_rng(0), cw, bw)
    r = robustness_index(x, y, batch, groups, k=10, n_boot=200)
    assert low <= r["robustness_index"] <= high


def test_the_index_interval_resamples_slides_and_has_width_where_neighbours_disagree():
    x, y, batch, groups = _features(np.random.default_rng(0), 1.0, 0.7)
    r = robustness_index(x, y, batch, groups, k=10, n_boot=200)
    lo, hi = r["ci95"]
    assert 0.8 < r["robustness_index"] < 1.0
    assert 0.05 < hi - lo < 0.3 and lo < r["robustness_index"] <= hi, (lo, hi)


def test_neighbours_of_the_same_group_never_count():
    """Two copies of each point in the same group: the copy is always the nearest point, yet
    each point's neighbour must be the nearest of another group, as a brute-force search
    finds it."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4))
    x = np.concatenate([x, x + 1e-6])
    labels = np.tile(rng.integers(0, 2, 40), 2)
    batch = np.tile(rng.integers(0, 2, 40), 2)
    groups = np.tile(np.arange(40).astype(str), 2)
    so, os_ = neighbour_counts(x, labels, batch, groups, k=1)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit @ unit.T
    sim[groups[:, None] == groups[None, :]] = -np.inf
    j = sim.argmax(1)
    assert so.tolist() == ((labels[j] == labels) & (batch[j] != batch)).astype(float).tolist()
    assert os_.tolist() == ((labels[j] != labels) & (batch[j] == batch)).astype(float).tolist()


def test_batch_probe_sees_the_batch_only_when_the_features_carry_it():
    rng = np.random.default_rng(2)
    for bw, expect_high in ((0.0, False), (2.0, True)):
        x, y, batch, groups = _features(rng, 1.0, bw)
        split = make_split(y, groups, seed=0)
        r = batch_probe(
            x, batch, split, groups[split.test], Cs=[0.1, 1.0], max_iter=500, n_boot=100,
            names=["s0", "s1", "s2"],
        )  # fmt: skip
        assert r["chance"] == pytest.approx(1 / 3)
        assert (r["balanced_accuracy"] > 0.9) == expect_high
        if not expect_high:
            assert r["balanced_accuracy"] < 0.5
