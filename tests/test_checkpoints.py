"""Pretraining checkpoints as the top level of every summary, interval and paired difference
(``pretrain.seeds``): the statistics, the task summary, the comparisons and the report's words."""

import numpy as np
import pytest

from cytofm.eval.compare import compare_results
from cytofm.eval.metrics import interval, summarise
from cytofm.eval.predictions import predictions_path, save_predictions
from cytofm.eval.summary import summary_table
from cytofm.report.tables import results_table, to_markdown
from cytofm.results import write_result


def test_checkpoints_are_the_top_level_of_the_interval():
    """Nine runs from three checkpoints are three draws of the recipe, not nine: with a
    checkpoint effect the interval that knows the checkpoints covers the true value at about
    its nominal rate; one that treats the nine runs as independent falls far short."""
    rng = np.random.default_rng(0)
    clusters = np.repeat([0, 1, 2], 3)
    covered = {"checkpoints": 0, "runs": 0}
    n = 600
    for _ in range(n):
        values = 0.7 + np.repeat(rng.normal(0, 0.04, 3), 3) + rng.normal(0, 0.01, 9)
        centre = values.mean()
        boot = centre + rng.normal(0, 0.005, 200)  # the test items' part, small here
        for name, labels in (("checkpoints", clusters), ("runs", None)):
            lo, hi = interval(centre, boot, values, clusters=labels)["ci95"]
            covered[name] += lo <= 0.7 <= hi
    assert covered["checkpoints"] / n >= 0.92
    assert covered["runs"] / n <= 0.8
    assert interval(0.5, np.full(10, 0.5), np.arange(9.0), clusters=clusters)["n_units"] == 3
    # one checkpoint: the evaluation seeds are the units, as before
    assert interval(0.5, np.full(10, 0.5), np.arange(3.0), clusters=[0, 0, 0])["n_units"] == 3


def _probas(y, right_rate, rng):
    right = rng.random(len(y)) < right_rate
    pred = np.where(right, y, (y + 1) % 3)
    return np.eye(3)[pred] * 0.7 + 0.1


def _result(tmp_path, backbone, kind, probas, y):
    """A linear-probe result of one checkpoint with its real summary and predictions."""
    folder = tmp_path / "eval" / "t" / backbone
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "linear.json"
    seeds = list(range(len(probas)))
    save_predictions(
        predictions_path(out), y, None, {"all": probas}, test_rows=np.arange(len(y)),
        seeds={"all": seeds},
    )  # fmt: skip
    block = {
        "shots": None,
        "fraction": None,
        "summary": summarise(y, probas, n_boot=200),
        "runs": [{"seed": s} for s in seeds],
    }
    write_result(
        out,
        {
            "task": "t", "dataset": "d", "backbone": backbone, "backbone_kind": kind,
            "protocol": "linear", "classes": ["0", "1", "2"], "split": {"n_test": len(y)},
            "results": [block], "skipped": [], "seconds": 0.0, "provenance": {},
        },
    )  # fmt: skip
    return out


@pytest.fixture
def three_checkpoints(tmp_path):
    """``cytofm`` pretrained with three seeds: checkpoint 0 is far ahead of its random
    control, checkpoints 1 and 2 are not; a morphometry control with one result."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 300)
    paths, groups = [], {}
    for index, (name, rate) in enumerate((("cytofm", 0.9), ("cytofm_seed1", 0.52),
                                          ("cytofm_seed2", 0.5))):  # fmt: skip
        paths.append(_result(tmp_path, name, "pretrained", [_probas(y, rate, rng)] * 2, y))
        groups[name] = ["cytofm", index]
        control = "random" if index == 0 else f"random_seed{index}"
        paths.append(_result(tmp_path, control, "random", [_probas(y, 0.5, rng)] * 2, y))
        groups[control] = ["random", index]
    paths.append(_result(tmp_path, "morphometry", "morphometry", [_probas(y, 0.5, rng)] * 2, y))
    return paths, groups


def test_a_verdict_on_three_checkpoints_is_about_the_recipe(three_checkpoints):
    paths, groups = three_checkpoints
    first = [p for p in paths if p.parent.name in ("cytofm", "random")]
    one = compare_results(first, n_boot=200)
    one = one[(one.metric == "balanced_accuracy") & (one.versus == "random")].iloc[0]
    assert one.verdict == "better" and one.n_checkpoints == 1  # checkpoint 0 alone

    table = compare_results(paths, n_boot=200, checkpoints=groups)
    bal = table[table.metric == "balanced_accuracy"]
    # the configured backbones only, each checkpoint paired with its own control, and the
    # single morphometry result with every checkpoint
    assert set(zip(bal.backbone, bal.versus, strict=True)) == {
        ("cytofm", "random"),
        ("cytofm", "morphometry"),
    }
    assert (bal.n_checkpoints == 3).all() and (bal.n_seeds == 2).all()
    pooled = bal[bal.versus == "random"].iloc[0]
    assert pooled.difference == pytest.approx(
        np.mean([one.difference, 0.0, 0.0]), abs=0.06
    )  # checkpoints 1 and 2 are at the control's level
    assert pooled.verdict == "no difference" and pooled.ci_low < 0 < pooled.ci_high


def test_the_summary_pools_checkpoints_and_the_report_says_how_many(three_checkpoints):
    paths, groups = three_checkpoints
    summary = summary_table(paths, groups, n_boot=200)
    assert sorted(summary.backbone) == ["cytofm", "morphometry", "random"]
    row = summary.set_index("backbone").loc["cytofm"]
    assert row.n_checkpoints == 3 and row.checkpoints == "cytofm cytofm_seed1 cytofm_seed2"
    alone = summary_table(paths, None, n_boot=200).set_index("backbone")
    members = alone.loc[["cytofm", "cytofm_seed1", "cytofm_seed2"], "balanced_accuracy_mean"]
    assert row.balanced_accuracy_mean == pytest.approx(members.mean())
    # the checkpoints disagree: the pooled interval spans them
    assert row.balanced_accuracy_ci_low < members.min() and row.balanced_accuracy_ci_high > (
        members.max()
    )
    assert summary.set_index("backbone").loc["morphometry"].n_checkpoints == 1

    compared = compare_results(paths, n_boot=200, checkpoints=groups)
    text = to_markdown(results_table(summary, comparisons=compared))
    assert "cytofm (3 checkpoints)" in text and "over 3 pretraining checkpoints" in text
    single = compare_results([p for p in paths if p.parent.name in ("cytofm", "random")], 200)
    one = summary_table([p for p in paths if p.parent.name in ("cytofm", "random")])
    text = to_markdown(results_table(one, comparisons=single))
    assert "for this checkpoint" in text and "checkpoints)" not in text


def test_attention_against_truth_pools_checkpoint_means_and_their_spread():
    from cytofm.eval.summary import _pooled_truth

    def truth(mean, half):
        block = {"mean": mean, "std": 0.0, "ci95": [mean - half, mean + half]}
        return {"auroc": block, "top_k_positive_rate": block, "base_rate": 0.2}

    same = _pooled_truth([truth(0.7, 0.05)] * 3)
    assert same["attention_auroc_mean"] == pytest.approx(0.7)
    assert same["attention_auroc_ci_low"] == pytest.approx(0.65)  # no spread: the half-width
    apart = _pooled_truth([truth(0.6, 0.05), truth(0.7, 0.05), truth(0.8, 0.05)])
    assert apart["attention_auroc_mean"] == pytest.approx(0.7)
    # the checkpoints disagree: t(2) x sd / sqrt(3) = 0.248 on top of the half-width
    assert apart["attention_auroc_ci_high"] - 0.7 == pytest.approx(np.hypot(0.05, 0.2484), 1e-3)
    assert _pooled_truth([truth(0.7, 0.05), None]) == {}
