import numpy as np
import pytest

from cytofm.cells.metrics import match_points


def test_one_to_one_matching():
    truth = np.array([[0, 0], [10, 0], [100, 100]])
    pred = np.array([[1, 0], [2, 0], [10, 1], [300, 300]])
    r = match_points(pred, truth, tolerance=3)
    # two predictions near (0,0) can match it only once
    assert (r["tp"], r["fp"], r["fn"]) == (2, 2, 1)
    assert r["recall"] == pytest.approx(2 / 3) and r["precision"] == pytest.approx(0.5)


def test_optimal_not_greedy():
    # greedy nearest-first would pair p0 with t1 and leave t0 unmatched
    truth = np.array([[0.0, 0.0], [2.0, 0.0]])
    pred = np.array([[1.9, 0.0], [4.0, 0.0]])
    assert match_points(pred, truth, tolerance=2.5)["tp"] == 2


def test_exact_hit_and_empty_inputs():
    assert match_points(np.array([[5, 5]]), np.array([[5, 5]]), 1)["tp"] == 1
    r = match_points(np.zeros((0, 2)), np.array([[1, 1]]), 1)
    assert r["recall"] == 0 and np.isnan(r["precision"])
