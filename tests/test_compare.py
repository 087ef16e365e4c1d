"""Paired comparisons from the files evaluation jobs write: JSON + predictions side by side."""

import numpy as np
import pytest

from cytofm.eval.compare import compare_results, holm, predictions_path, verdicts
from cytofm.eval.predictions import load_predictions, save_predictions
from cytofm.results import write_result


def _job(tmp_path, backbone, kind, probas, y, groups=None, shots=None, rows=None, seeds=None):
    """A fewshot (or, without shots, linear) result of one backbone; ``shots`` and
    ``probas`` may be lists for several budgets in one result."""
    folder = tmp_path / "eval" / "t" / backbone
    folder.mkdir(parents=True, exist_ok=True)
    protocol = "linear" if shots is None else "fewshot"
    out = folder / f"{protocol}.json"
    budgets = shots if isinstance(shots, list) else [shots]
    per_budget = probas if isinstance(shots, list) else [probas]
    keys = ["all" if k is None else f"shots={k}" for k in budgets]
    save_predictions(
        predictions_path(out), y, groups, dict(zip(keys, per_budget, strict=True)),
        test_rows=np.arange(len(y)) if rows is None else rows,
        seeds={k: list(range(len(p))) if seeds is None else seeds
               for k, p in zip(keys, per_budget, strict=True)},
    )  # fmt: skip
    write_result(
        out,
        {
            "task": "t",
            "dataset": "d",
            "backbone": backbone,
            "backbone_kind": kind,
            "protocol": protocol,
            "classes": ["0", "1", "2"],
            "split": {"n_test": len(y)},
            "results": [{"shots": k, "fraction": None, "summary": {}, "runs": []} for k in budgets],
            "skipped": [],
            "seconds": 0.0,
            "provenance": {},
        },
    )
    return out


def _probas(y, right_rate, rng):
    right = rng.random(len(y)) < right_rate
    pred = np.where(right, y, (y + 1) % 3)
    return np.eye(3)[pred] * 0.7 + 0.1


def test_predictions_round_trip(tmp_path):
    y = np.array([0, 1, 2, 1])
    p = [np.full((4, 3), 1 / 3), np.eye(3)[[0, 1, 2, 0]]]
    path = save_predictions(tmp_path / "x.predictions.npz", y, np.array(list("aabb")), {"all": p})
    back = load_predictions(path)
    assert back["y_test"].tolist() == y.tolist() and back["groups"].tolist() == list("aabb")
    assert np.allclose(back["blocks"]["all"][1], p[1])
    assert predictions_path(tmp_path / "abmil.json") == tmp_path / "abmil" / "predictions.npz"


def test_backbones_are_compared_with_the_control_on_the_same_rows(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    paths = [
        _job(tmp_path, "ssl", "pretrained", [_probas(y, 0.9, rng) for _ in range(3)], y, shots=4),
        _job(tmp_path, "rnd", "random", [_probas(y, 0.5, rng) for _ in range(3)], y, shots=4),
        _job(tmp_path, "uni", "timm", [_probas(y, 0.9, rng) for _ in range(3)], y, shots=4),
    ]
    table = compare_results(paths, n_boot=200)
    bal = table[table.metric == "balanced_accuracy"]
    pairs = set(zip(bal.backbone, bal.versus, strict=True))
    # each backbone against the control, and the two non-control backbones against each other
    assert pairs == {("ssl", "rnd"), ("uni", "rnd"), ("ssl", "uni")}
    vs_control = bal[bal.versus == "rnd"]
    assert (vs_control.verdict == "better").all() and (vs_control.p_value < 0.01).all()
    assert vs_control.difference.to_numpy() == pytest.approx([0.4, 0.4], abs=0.08)
    (tie,) = bal[bal.versus == "uni"].itertuples()
    assert tie.verdict == "no difference" and tie.ci_low < 0 < tie.ci_high
    # two backbones ahead of the control but not of each other: no winner, no bold
    assert verdicts(table, "balanced_accuracy")[("fewshot", "shots=4")]["winner"] is None


def test_a_clear_winner_and_grouped_resampling(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    groups = np.repeat([f"p{i}" for i in range(40)], 5)
    paths = [
        _job(tmp_path, "ssl", "pretrained", [_probas(y, 0.95, rng)], y, groups),
        _job(tmp_path, "rnd", "random", [_probas(y, 0.4, rng)], y, groups),
    ]
    table = compare_results(paths, n_boot=200)
    assert set(table.resampled) == {"groups"}
    assert verdicts(table, "balanced_accuracy")[("linear", "all")]["winner"] == "ssl"


def test_holm_matches_the_step_down_definition():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> monotone
    assert holm(p)[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(holm(p)[4])
    assert holm([0.5, 0.9])[1] == 1.0  # capped


def test_verdicts_rest_on_the_holm_adjusted_p_values(tmp_path):
    """Eight budgets where one backbone is slightly ahead: a raw p below 0.05 that does not
    survive the family's adjustment reads "no difference"."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 400)
    shots = list(range(1, 9))
    paths = [
        _job(
            tmp_path, "ssl", "pretrained", [[_probas(y, 0.58, rng)] for _ in shots], y, shots=shots
        ),
        _job(tmp_path, "rnd", "random", [[_probas(y, 0.5, rng)] for _ in shots], y, shots=shots),
    ]
    table = compare_results(paths, n_boot=200)
    acc = table[table.metric == "accuracy"]
    assert (acc.family_size == 8).all()
    assert (acc.p_holm >= acc.p_value - 1e-12).all()
    raw_only = acc[(acc.p_value < 0.05) & (acc.p_holm >= 0.05)]
    assert len(raw_only), "the data should give a raw-only effect"
    assert (raw_only.verdict == "no difference").all()
    assert ((acc.p_holm < 0.05) == (acc.verdict == "better")).all()


def test_results_on_other_rows_or_seeds_are_not_paired(tmp_path):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 100)
    a = _job(tmp_path, "ssl", "pretrained", [_probas(y, 0.9, rng)] * 2, y, shots=2)
    b = _job(tmp_path, "rnd", "random", [_probas(y, 0.5, rng)] * 2, y, shots=2,
             rows=np.arange(100)[::-1])  # fmt: skip
    assert compare_results([a, b], n_boot=50).empty  # same length, other rows
    b = _job(tmp_path, "rnd", "random", [_probas(y, 0.5, rng)] * 2, y, shots=2, seeds=[5, 6])
    assert compare_results([a, b], n_boot=50).empty  # other seeds
    b = _job(tmp_path, "rnd", "random", [_probas(y, 0.5, rng)] * 2, y, shots=2)
    assert len(compare_results([a, b], n_boot=50))
