"""Train/val/test splits that respect groups, and deterministic few-shot sampling.

A split is decided once per task (from the data when it carries one, otherwise from
``split_seed``) and shared by every backbone and protocol, so numbers are comparable. Seeds vary
what is random inside a protocol: which k examples form a few-shot training set, and the
initialisation and batch order of LoRA.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cytofm.errors import InputDataError
from cytofm.labels import as_str_array

__all__ = [
    "Split",
    "check_groups_disjoint",
    "given_split",
    "has_groups",
    "hold_out_calibration",
    "leave_one_out",
    "make_split",
    "sample_fraction",
    "sample_shots",
]

SPLIT_NAMES = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Split:
    """Row indices of each part; ``source`` says whether the data gave it or it was derived.
    ``calib``: validation rows held apart from model selection and temperature scaling, on
    which conformal prediction sets are calibrated (:func:`hold_out_calibration`)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    source: str
    calib: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def to_dict(self) -> dict:
        out = {
            "source": self.source,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test),
        }
        if len(self.calib):
            out["n_calib"] = len(self.calib)
        return out

    def parts(self) -> dict[str, np.ndarray]:
        """Every non-empty part by name."""
        named = {"train": self.train, "val": self.val, "calib": self.calib, "test": self.test}
        return {name: rows for name, rows in named.items() if len(rows)}


def check_groups_disjoint(split: Split, groups, what: str = "") -> None:
    """Raise when a group (patient, slide) has rows in two parts of ``split``: its test rows
    would be scored by a model that trained or was selected on the same patient. ``what``
    names the task in the message."""
    if groups is None:
        return
    groups = as_str_array(groups)
    if not has_groups(groups):
        return
    seen: dict[str, str] = {}
    straddle: dict[str, set[str]] = {}
    for name, rows in split.parts().items():
        for g in np.unique(groups[rows]).tolist():
            if g in seen and seen[g] != name:
                straddle.setdefault(g, {seen[g]}).add(name)
            seen.setdefault(g, name)
    if straddle:
        shown = [f"{g!r} ({' and '.join(sorted(p))})" for g, p in sorted(straddle.items())[:5]]
        more = f" and {len(straddle) - 5} more" if len(straddle) > 5 else ""
        raise InputDataError(
            f"{what + ': ' if what else ''}{len(straddle)} group(s) have rows in two parts of "
            f"the {split.source} split: {', '.join(shown)}{more}. A patient's cells must all be "
            "in one part; fix the split column so each group sits in one part, or leave the "
            "task's split empty to derive a grouped one"
        )


def hold_out_calibration(
    split: Split, labels, groups=None, *, share: float = 0.5, seed: int = 0
) -> Split:
    """``split`` with about ``share`` of its validation rows (stratified, whole groups) moved to
    ``calib``; the split unchanged when ``share`` is 0 or the validation part is too small to
    divide (fewer than two rows of some class, or fewer than two groups)."""
    if share <= 0 or len(split.val) < 4:
        return split
    labels = np.asarray(labels)
    g = np.full(len(labels), "", dtype=str) if groups is None else as_str_array(groups)
    y = labels[split.val]
    counts = np.bincount(np.unique(y, return_inverse=True)[1])
    if counts.min() < 2 or (has_groups(g[split.val]) and len(np.unique(g[split.val])) < 2):
        return split
    try:
        val, calib = _holdout(labels, g, split.val, share, seed + 2)
    except (InputDataError, ValueError):
        return split
    return dataclasses.replace(split, val=np.sort(val), calib=np.sort(calib))


def given_split(splits) -> Split:
    """Use a per-row column of 'train'/'val'/'test' values from the data."""
    values = np.char.lower(np.char.strip(as_str_array(splits)))
    bad = sorted(set(values) - set(SPLIT_NAMES))
    if bad:
        raise InputDataError(
            f"split column holds {bad}; allowed values are {list(SPLIT_NAMES)} "
            "(or leave the task's split empty to derive a grouped split)"
        )
    parts = {name: np.flatnonzero(values == name) for name in SPLIT_NAMES}
    for name in ("train", "test"):
        if len(parts[name]) == 0:
            raise InputDataError(f"the given split has no '{name}' rows")
    return Split(parts["train"], parts["val"], parts["test"], "given")


def has_groups(groups: np.ndarray) -> bool:
    return len(np.unique(groups)) > 1 and not (groups == "").any()


def _holdout(labels, groups, idx, fraction, seed) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, held out) with about ``fraction`` held out, stratified by label
    and, when groups are given, with no group on both sides."""
    # here, not at the top: the workflow's plan imports this module, and every snakemake
    # process (two per SLURM job) would pay scikit-learn's import (1-2 s) for nothing
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    n_splits = max(2, int(round(1.0 / fraction)))
    y, g = labels[idx], groups[idx]
    if has_groups(g):
        n_groups = len(np.unique(g))
        if n_groups < n_splits:
            raise InputDataError(
                f"only {n_groups} groups (patients/slides) for a grouped hold-out of "
                f"{fraction:.0%}; add groups, give a split column, or lower the fraction"
            )
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        rest, held = next(folds.split(idx, y, g))
    else:
        min_count = np.bincount(np.unique(y, return_inverse=True)[1]).min()
        folds = StratifiedKFold(
            n_splits=min(n_splits, max(int(min_count), 2)), shuffle=True, random_state=seed
        )
        rest, held = next(folds.split(idx, y))
    return idx[rest], idx[held]


def make_split(
    labels,
    groups=None,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Stratified train/val/test split, grouped (patient, slide, stain batch) when groups exist.

    Groups count only when every row has one and there are at least two; then no group appears
    in two parts. Without groups the split is stratified by label only.
    """
    labels = np.asarray(labels)
    groups = np.full(len(labels), "", dtype=str) if groups is None else as_str_array(groups)
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
    empty = int((groups == "").sum())
    if 0 < empty < len(groups):
        raise InputDataError(
            f"{empty} of {len(groups)} rows have no group (patient/slide): a grouped split would "
            "silently treat them as ungrouped; fill the group column for every row or leave it "
            "empty for all"
        )
    idx = np.arange(len(labels))
    rest, test = _holdout(labels, groups, idx, test_fraction, seed)
    if val_fraction > 0:
        train, val = _holdout(labels, groups, rest, val_fraction / (1 - test_fraction), seed + 1)
    else:
        train, val = rest, idx[:0]
    source = "grouped" if has_groups(groups) else "stratified"
    return Split(np.sort(train), np.sort(val), np.sort(test), source)


def leave_one_out(
    labels, groups, values, *, val_fraction: float = 0.2, seed: int = 0
) -> list[tuple[str, Split]]:
    """One split per distinct value of ``values`` (a site, stain or scanner per row): its rows
    are the test set; the validation rows are held out of the others as :func:`make_split`
    holds them out (stratified, grouped where groups exist; where too few groups remain for
    ``val_fraction``, one group validates, or none when one is left), the rest train. Needs
    two values or more."""
    labels = np.asarray(labels)
    values = as_str_array(values)
    groups = np.full(len(labels), "", dtype=str) if groups is None else as_str_array(groups)
    kinds = sorted(set(values.tolist()))
    if len(kinds) < 2:
        raise InputDataError(
            f"leave-one-out needs at least two values to hold out, found {kinds}; choose "
            "another hold_out column or another split"
        )
    folds = []
    for value in kinds:
        test = np.flatnonzero(values == value)
        rest = np.flatnonzero(values != value)
        fraction = val_fraction
        n_groups = len(np.unique(groups[rest])) if has_groups(groups[rest]) else len(rest)
        if fraction > 0 and n_groups < max(2, int(round(1.0 / fraction))):
            # too few groups left for that share: one of them validates (none if only one)
            fraction = 1.0 / n_groups if n_groups >= 2 else 0.0
        if fraction > 0:
            train, val = _holdout(labels, groups, rest, fraction, seed + 1)
        else:
            train, val = rest, rest[:0]
        folds.append((value, Split(np.sort(train), np.sort(val), test, f"held out: {value}")))
    return folds


def sample_shots(
    labels, pool, k: int, seed: int, n_classes: int | None = None
) -> tuple[np.ndarray, list[int]]:
    """``k`` examples of each class from ``pool`` (row indices), the same for the same seed.

    The draw is nested: for one seed, the k-shot set contains the (k-1)-shot set, so a curve
    over k adds examples rather than swapping them. Returns the chosen rows and the classes with
    fewer than ``k`` examples in the pool (the caller reports that k as skipped).
    """
    labels = np.asarray(labels)
    pool = np.asarray(pool)
    classes = range(n_classes) if n_classes is not None else np.unique(labels[pool])
    chosen, short = [], []
    for c in classes:
        members = np.sort(pool[labels[pool] == c])
        if len(members) < k:
            short.append(int(c))
            continue
        order = np.random.default_rng([seed, int(c), 1009]).permutation(len(members))
        chosen.append(members[order[:k]])
    rows = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=int)
    return rows, short


def sample_fraction(labels, pool, fraction: float, seed: int) -> np.ndarray:
    """A class-stratified ``fraction`` of ``pool`` (at least one row per class present), nested
    like :func:`sample_shots`: for one seed, a larger fraction contains the smaller ones."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    pool = np.asarray(pool)
    chosen = []
    for c in np.unique(labels[pool]):
        members = np.sort(pool[labels[pool] == c])
        n = max(1, int(round(fraction * len(members))))
        order = np.random.default_rng([seed, int(c), 2011]).permutation(len(members))
        chosen.append(members[order[:n]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=int)
