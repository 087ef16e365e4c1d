import numpy as np
import pytest

from cytofm.errors import InputDataError
from cytofm.eval.splits import given_split, make_split, sample_shots


def _data(n_groups=20, per_group=12, n_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"patient{i:02d}" for i in range(n_groups)], per_group)
    labels = rng.integers(0, n_classes, size=len(groups))
    return labels, groups


def test_grouped_split_keeps_each_group_in_one_part():
    labels, groups = _data()
    split = make_split(labels, groups, val_fraction=0.2, test_fraction=0.2, seed=3)
    parts = [set(groups[idx]) for idx in (split.train, split.val, split.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    all_rows = np.concatenate([split.train, split.val, split.test])
    assert sorted(all_rows) == list(range(len(labels)))  # a partition of the rows
    assert split.source == "grouped"
    # roughly the asked fractions (whole groups move together)
    assert 0.1 < len(split.test) / len(labels) < 0.3
    assert 0.1 < len(split.val) / len(labels) < 0.3
    # every class is in train and test
    assert set(labels[split.train]) == set(labels) == set(labels[split.test])


def test_split_is_a_function_of_its_seed():
    labels, groups = _data()
    a = make_split(labels, groups, seed=1)
    b = make_split(labels, groups, seed=1)
    c = make_split(labels, groups, seed=2)
    assert np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val)
    assert not np.array_equal(a.test, c.test)


def test_without_groups_split_is_stratified():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    split = make_split(labels, None, seed=0)
    assert split.source == "stratified"
    counts = np.bincount(labels[split.test], minlength=3)
    assert counts.tolist() == [10, 6, 4]  # 20% of each class


def test_too_few_groups_is_a_clear_error():
    labels, groups = _data(n_groups=3)
    with pytest.raises(InputDataError, match="only 3 groups"):
        make_split(labels, groups, test_fraction=0.2)


def test_given_split_is_used_and_checked():
    values = np.array(["train"] * 6 + ["val"] * 2 + ["Test "] * 2)
    split = given_split(values)
    assert split.train.tolist() == list(range(6)) and split.test.tolist() == [8, 9]
    with pytest.raises(InputDataError, match="validation|allowed values"):
        given_split(np.array(["train", "tset"]))


def test_shot_sampling_is_deterministic_nested_and_class_balanced():
    labels, _ = _data(seed=5)
    pool = np.arange(0, len(labels), 2)
    a, short = sample_shots(labels, pool, 4, seed=7, n_classes=4)
    b, _ = sample_shots(labels, pool, 4, seed=7, n_classes=4)
    assert not short and np.array_equal(a, b)
    assert np.bincount(labels[a], minlength=4).tolist() == [4, 4, 4, 4]
    assert set(a) <= set(pool)
    bigger, _ = sample_shots(labels, pool, 8, seed=7, n_classes=4)
    assert set(a) <= set(bigger)  # nested: the 8-shot set extends the 4-shot set
    other, _ = sample_shots(labels, pool, 4, seed=8, n_classes=4)
    assert not np.array_equal(a, other)


def test_class_with_too_few_examples_is_reported():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 10)
    rows, short = sample_shots(labels, np.arange(len(labels)), 5, seed=0, n_classes=3)
    assert short == [1]
    assert set(labels[rows]) == {0, 2}


def test_partly_missing_groups_are_refused():
    labels, groups = _data()
    groups = groups.astype(object)
    groups[:5] = ""
    with pytest.raises(InputDataError, match="5 of 240 rows have no group"):
        make_split(labels, groups)


def test_leave_one_out_tests_each_value_once_with_grouped_validation():
    from cytofm.eval.splits import leave_one_out

    rng = np.random.default_rng(0)
    groups = np.repeat([f"g{i}" for i in range(24)], 10)
    sites = np.array([f"s{int(g[1:]) % 3}" for g in groups])
    labels = rng.integers(0, 3, len(groups))
    folds = leave_one_out(labels, groups, sites, val_fraction=0.2, seed=0)
    assert [v for v, _ in folds] == ["s0", "s1", "s2"]
    tested = np.concatenate([s.test for _, s in folds])
    assert sorted(tested.tolist()) == list(range(len(groups)))  # every row tested once
    for value, s in folds:
        assert (sites[s.test] == value).all() and not (sites[np.r_[s.train, s.val]] == value).any()
        assert not set(groups[s.train]) & set(groups[s.val])  # groups never straddle
        assert len(s.val) > 0 and len(set(s.train) | set(s.val) | set(s.test)) == len(groups)


def test_leave_one_out_with_few_groups_keeps_one_for_validation_or_none():
    from cytofm.errors import InputDataError
    from cytofm.eval.splits import leave_one_out

    groups = np.repeat(["a", "b", "c", "d"], 8)
    sites = np.repeat(["x", "x", "y", "z"], 8)
    labels = np.tile(np.arange(4), 8)
    folds = dict(leave_one_out(labels, groups, sites, val_fraction=0.2))
    assert len(set(groups[folds["x"].val])) == 1  # two groups left: one validates
    assert len(folds["y"].val) == 8  # three left: one validates
    with pytest.raises(InputDataError, match="at least two values"):
        leave_one_out(labels, groups, np.full(32, "x"))


def test_calibration_rows_are_whole_groups_of_validation_set_apart():
    from cytofm.eval.splits import hold_out_calibration

    labels, groups = _data(n_groups=40)
    split = make_split(labels, groups, val_fraction=0.3, test_fraction=0.2, seed=1)
    out = hold_out_calibration(split, labels, groups, share=0.5, seed=1)
    # the calibration rows come out of validation, and validation keeps the rest
    assert sorted(np.r_[out.val, out.calib].tolist()) == split.val.tolist()
    assert len(out.calib) and len(out.val)
    assert np.array_equal(out.train, split.train) and np.array_equal(out.test, split.test)
    parts = [set(groups[rows]) for rows in out.parts().values()]
    assert sum(len(p) for p in parts) == len(set().union(*parts))  # no group in two parts
    assert set(labels[out.calib]) == set(labels[split.val])  # stratified
    assert out.to_dict()["n_calib"] == len(out.calib)
    # the same seed, the same rows; share 0 or a tiny validation part: nothing set apart
    again = hold_out_calibration(split, labels, groups, share=0.5, seed=1)
    assert np.array_equal(again.calib, out.calib)
    assert hold_out_calibration(split, labels, groups, share=0.0) is split
    tiny = make_split(labels, groups, val_fraction=0.0, seed=1)
    assert len(hold_out_calibration(tiny, labels, groups, share=0.5).calib) == 0


def test_a_group_in_two_parts_of_a_given_split_is_refused_by_name():
    from cytofm.eval.splits import check_groups_disjoint

    values = np.array(["train"] * 4 + ["val"] * 2 + ["test"] * 2)
    groups = np.array(["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p1"])
    with pytest.raises(InputDataError, match=r"1 group\(s\).*'p1' \(test and train\)"):
        check_groups_disjoint(given_split(values), groups, "task 'x'")
    groups[-1] = "p4"
    check_groups_disjoint(given_split(values), groups)  # each patient in one part: fine
    check_groups_disjoint(given_split(values), None)  # no groups: nothing to check


def test_leave_one_out_refuses_a_patient_whose_cells_come_from_two_values():
    """Holding out site s0 would test p0's s0 cells with a model that trained on its s1
    cells: the task's stage refuses it (the folds themselves are built)."""
    from cytofm.eval.splits import check_groups_disjoint, leave_one_out

    groups = np.repeat([f"p{i}" for i in range(12)], 6)
    sites = np.array([f"s{int(g[1:]) % 3}" for g in groups])
    sites[0] = "s1"  # one of p0's cells comes from another site
    labels = np.tile(np.arange(3), 24)
    folds = leave_one_out(labels, groups, sites, val_fraction=0.2, seed=0)
    with pytest.raises(InputDataError, match="'p0'"):
        for value, split in folds:
            check_groups_disjoint(split, groups, f"holding out {value}")


def test_knn_votes_are_similarity_weighted():
    from sklearn.neighbors import KNeighborsClassifier

    from cytofm.eval.linear import knn_proba

    rng = np.random.default_rng(0)
    x, y, q = rng.normal(size=(400, 8)), rng.integers(0, 3, 400), rng.normal(size=(50, 8))
    # a very high temperature is the uniform vote
    uniform = KNeighborsClassifier(20, metric="cosine", algorithm="brute").fit(x, y)
    assert knn_proba(x, y, q, 20, 3, temperature=1e6) == pytest.approx(uniform.predict_proba(q))
    # a very low one leaves the nearest neighbour alone
    nearest = np.argmax(
        (q / np.linalg.norm(q, axis=1, keepdims=True))
        @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T,
        1,
    )
    assert knn_proba(x, y, q, 20, 3, temperature=1e-4).argmax(1).tolist() == y[nearest].tolist()
    # the default 0.07: probabilities are not multiples of 1 / k
    p = knn_proba(x, y, q, 20, 3)
    assert np.allclose(p.sum(1), 1) and not np.allclose(p * 20, np.round(p * 20))
