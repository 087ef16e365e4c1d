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
