"""Label trees: per-level metrics, mistake severity and screening operating points."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from cytofm.eval.hierarchy import LabelTree, check_hierarchy_spec, hierarchy_metrics

BETHESDA = {
    "negative": ["NILM"],
    "abnormal": {"low_grade": ["ASC-US", "LSIL"], "high_grade": ["ASC-H", "HSIL", "SCC"]},
}
CLASSES = ["NILM", "ASC-US", "LSIL", "ASC-H", "HSIL", "SCC"]


def _probas(rng, y, n_classes, skill):
    logits = rng.normal(size=(len(y), n_classes))
    logits[np.arange(len(y)), y] += skill
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def test_tree_levels_and_distances():
    tree = LabelTree(BETHESDA, CLASSES, "abnormal")
    assert tree.depth == 3
    names, index = tree.level(1)
    assert names == ["negative", "abnormal"] and index.tolist() == [0, 1, 1, 1, 1, 1]
    names, index = tree.level(2)
    assert names == ["NILM", "low_grade", "high_grade"]  # a class stands for itself
    assert index.tolist() == [0, 1, 1, 2, 2, 2]
    d = tree.distances()
    assert d[1, 2] == 2  # ASC-US / LSIL: siblings
    assert d[1, 3] == 4  # low grade / high grade: through 'abnormal'
    assert d[0, 4] == 5  # NILM (depth 2) to HSIL (depth 3): through the root
    assert tree.positive.tolist() == [False, True, True, True, True, True]
    assert tree.describe()[:3] == ["negative", "  NILM", "abnormal"]


@pytest.mark.parametrize(
    "spec, screening, message",
    [
        ({"a": ["NILM", "ASC-US"]}, "", "missing"),
        ({**BETHESDA, "other": ["XYZ"]}, "", "not classes of the task"),
        ({"negative": ["NILM", "NILM"], "abnormal": CLASSES[1:]}, "", "listed twice"),
        ({"NILM": ["NILM"], "abnormal": CLASSES[1:]}, "", "not class names"),
        (BETHESDA, "malignant", "not a node"),
        ({"all": CLASSES}, "all", "nothing is negative"),
    ],
)
def test_bad_trees_are_refused_naming_the_problem(spec, screening, message):
    with pytest.raises(ValueError, match=message):
        LabelTree(spec, CLASSES, screening)


def test_spec_shape_is_checked_before_classes_are_known():
    with pytest.raises(ValueError, match="tasks.x.hierarchy.abnormal"):
        check_hierarchy_spec({"abnormal": "LSIL"}, "tasks.x.hierarchy")
    with pytest.raises(ValueError, match="must list class names"):
        check_hierarchy_spec({"abnormal": []}, "h")


def test_metrics_match_scikit_learn_on_every_level_and_the_roc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 600)
    probas = [_probas(rng, y, 6, 1.5) for _ in range(3)]
    tree = LabelTree(BETHESDA, CLASSES, "abnormal")
    out = hierarchy_metrics(tree, y, probas, n_boot=200)
    for depth in (1, 2, 3):
        _, index = tree.level(depth)
        ba, f1 = [], []
        for p in probas:
            coarse = np.stack([p[:, index == k].sum(1) for k in range(index.max() + 1)], 1)
            ba.append(balanced_accuracy_score(index[y], coarse.argmax(1)))
            f1.append(f1_score(index[y], coarse.argmax(1), average="macro"))
        m = out[f"level{depth}_balanced_accuracy"]
        assert m["mean"] == pytest.approx(np.mean(ba))
        assert m["ci95"][0] < m["mean"] < m["ci95"][1]
        assert out[f"level{depth}_macro_f1"]["mean"] == pytest.approx(np.mean(f1))
    # the fine level is the plain task
    assert out["level3_balanced_accuracy"]["mean"] < out["level1_balanced_accuracy"]["mean"]
    assert "sensitivity_at_90_specificity" not in out  # no validation rows: no threshold


def test_screening_thresholds_are_set_on_validation_and_scored_on_test():
    """A laboratory fixes the cut-off before it screens: the threshold that gives 90% (95%)
    specificity on validation, applied to the test rows."""
    rng = np.random.default_rng(4)
    y_val, y = rng.integers(0, 6, 500), rng.integers(0, 6, 600)
    # one model per seed, scoring validation and test alike
    models = [(_probas(np.random.default_rng(s), y_val, 6, 1.5), _probas(rng, y, 6, 1.5))
              for s in range(3)]  # fmt: skip
    tree = LabelTree(BETHESDA, CLASSES, "abnormal")
    out = hierarchy_metrics(
        tree, y, [t for _, t in models], n_boot=200, y_val=y_val, val_probas=[v for v, _ in models]
    )
    for spec in (90, 95):
        sens, reached = [], []
        for v, t in models:
            neg_val = np.sort(v[y_val == 0, 1:].sum(1))[::-1]
            cut = neg_val[int(np.floor((1 - spec / 100) * len(neg_val) + 1e-9))]
            score = t[:, 1:].sum(1)
            sens.append((score[y > 0] > cut).mean())
            reached.append((score[y == 0] <= cut).mean())
            # on validation itself the cut-off keeps the false positives within the target
            assert (neg_val > cut).mean() <= 1 - spec / 100 + 1e-12
        assert out[f"sensitivity_at_{spec}_specificity"]["mean"] == pytest.approx(np.mean(sens))
        assert out[f"specificity_at_{spec}_threshold"]["mean"] == pytest.approx(np.mean(reached))
        # the test specificity lands near the target, not at it by construction
        assert abs(np.mean(reached) - spec / 100) < 0.08
    assert (
        out["sensitivity_at_95_specificity"]["mean"] < out["sensitivity_at_90_specificity"]["mean"]
    )


def test_mistake_severity_tells_near_misses_from_missed_abnormals():
    """Two models with the same accuracy: one confuses siblings, the other calls abnormal
    cells negative; only the severity tells them apart."""
    y = np.repeat(np.arange(6), 50)
    near, far = np.eye(6)[y] * 0.9 + 0.02, np.eye(6)[y] * 0.9 + 0.02
    wrong = np.arange(len(y)) % 5 == 0
    sibling = {0: 0, 1: 2, 2: 1, 3: 4, 4: 5, 5: 4}
    for i in np.flatnonzero(wrong & (y > 0)):
        near[i] = 0.02
        near[i, sibling[y[i]]] = 0.9
        far[i] = 0.02
        far[i, 0] = 0.9  # called negative
    tree = LabelTree(BETHESDA, CLASSES, "abnormal")
    a = hierarchy_metrics(tree, y, [near], n_boot=100)
    b = hierarchy_metrics(tree, y, [far], n_boot=100)
    assert a["level3_balanced_accuracy"]["mean"] == pytest.approx(
        b["level3_balanced_accuracy"]["mean"]
    )
    assert a["mistake_distance"]["mean"] == pytest.approx(2.0)
    assert b["mistake_distance"]["mean"] > 4.5
    assert a["mistakes_across_root"]["mean"] == 0.0 and b["mistakes_across_root"]["mean"] == 1.0
    assert a["level1_balanced_accuracy"]["mean"] == 1.0 > b["level1_balanced_accuracy"]["mean"]


def test_groups_are_resampled_whole_and_seeds_widen_the_interval():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 6, 300)
    groups = np.repeat(np.arange(30), 10)
    tree = LabelTree({"negative": ["NILM"], "abnormal": CLASSES[1:]}, CLASSES, "abnormal")
    one = hierarchy_metrics(tree, y, [_probas(rng, y, 6, 1.0)], groups=groups, n_boot=200)
    three = hierarchy_metrics(
        tree, y, [_probas(rng, y, 6, s) for s in (0.5, 1.0, 2.0)], groups=groups, n_boot=200
    )
    width = lambda m: m["ci95"][1] - m["ci95"][0]  # noqa: E731
    assert width(three["level2_balanced_accuracy"]) > width(one["level2_balanced_accuracy"])
    assert (
        three["level2_balanced_accuracy"]["se_seed"]
        > 0
        == one["level2_balanced_accuracy"]["se_seed"]
    )
