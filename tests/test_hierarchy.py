"""Label trees: per-level metrics, mistake severity and screening operating points."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_curve

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
    for spec in (90, 95):
        want = []
        for p in probas:
            fpr, tpr, _ = roc_curve(y > 0, p[:, 1:].sum(1))
            want.append(tpr[fpr <= 1 - spec / 100 + 1e-12].max())
        got = out[f"sensitivity_at_{spec}_specificity"]["mean"]
        assert got == pytest.approx(np.mean(want), abs=1e-9)
    assert (
        out["sensitivity_at_95_specificity"]["mean"] <= out["sensitivity_at_90_specificity"]["mean"]
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
