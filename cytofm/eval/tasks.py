"""A task's data and split: the labels, groups, given splits and meta columns of its dataset
store, and the split every protocol of the task shares (given by the data, derived once from
``split_seed`` grouped by patient/slide/batch, or one fold per held-out value).

Every consumer of a task's rows (the evaluation harness, the cell head, the probes, the
robustness index, the rows pretraining leaves out) reads them here, so all of them see the
same split.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cytofm.errors import InputDataError
from cytofm.eval.splits import Split, check_groups_disjoint, given_split, leave_one_out, make_split
from cytofm.store import as_str_array, open_store

if TYPE_CHECKING:
    from cytofm.config import TaskConfig

__all__ = ["dataset_column", "load_task_data", "task_folds", "task_split"]


def load_task_data(task: TaskConfig, dataset_store: str | Path) -> dict[str, Any]:
    """Labels, groups, optional given splits and class names of a task's dataset store."""
    ds = open_store(dataset_store)
    if task.label not in ds:
        raise InputDataError(
            f"task '{task.name}': {dataset_store} has no array '{task.label}' "
            f"(arrays: {sorted(ds.array_keys())}); set evaluate.tasks.{task.name}.label"
        )
    labels = np.asarray(ds[task.label][:]).astype(np.int64)
    classes = [str(c) for c in ds.attrs.get("classes", [])] or [
        str(c) for c in range(int(labels.max()) + 1)
    ]
    groups = as_str_array(ds[task.group][:]) if task.group in ds else None
    splits = as_str_array(ds["splits"][:]) if "splits" in ds else None
    return {"labels": labels, "groups": groups, "splits": splits, "classes": classes, "store": ds}


def dataset_column(task: TaskConfig, data: dict[str, Any], name: str) -> np.ndarray:
    """A per-row column of the task's dataset: ``groups``, or a meta column (site, stain...)."""
    if name == task.group and data["groups"] is not None:
        return data["groups"]
    ds = data["store"]
    for key in (f"meta_{name}", name):
        if key in ds:
            return as_str_array(ds[key][:])
    kept = list(ds.attrs.get("meta_columns", []))
    raise InputDataError(
        f"task '{task.name}': dataset '{task.dataset}' has no column '{name}' (its meta "
        f"columns: {kept}, and '{task.group}'). List it in datasets.{task.dataset}.meta_columns "
        "(a CSV column kept per image) and import it again, or name another column."
    )


def task_folds(task: TaskConfig, data: dict[str, Any]) -> list[tuple[str | None, Split]]:
    """The task's split as ``[(None, split)]``, or for ``split: leave_one_out`` one
    ``(held-out value, split)`` per value of ``hold_out``; every class must be in each
    training part (a held-out site may lack some classes)."""
    if task.split != "leave_one_out":
        return [(None, task_split(task, data))]
    try:
        folds = leave_one_out(
            data["labels"],
            data["groups"],
            dataset_column(task, data, task.hold_out),
            val_fraction=task.val_fraction,
            seed=task.split_seed,
        )
    except InputDataError as e:
        raise InputDataError(f"task '{task.name}': {e}") from None
    for value, split in folds:
        check_groups_disjoint(
            split, data["groups"], f"task '{task.name}' holding out {task.hold_out}={value!r}"
        )
        missing = sorted(set(range(len(data["classes"]))) - set(data["labels"][split.train]))
        if missing:
            names = [data["classes"][c] for c in missing]
            raise InputDataError(
                f"task '{task.name}': holding out {task.hold_out}={value!r} leaves no training "
                f"examples of {names}; merge values of '{task.hold_out}' or drop those classes"
            )
    return folds


def task_split(task: TaskConfig, data: dict[str, Any]) -> Split:
    """The task's one split (a ``leave_one_out`` task has several: :func:`task_folds`)."""
    if task.split == "leave_one_out":
        raise InputDataError(
            f"task '{task.name}' holds out each value of '{task.hold_out}' in turn; it has no "
            "single split to fit a final model on (use a task with a derived or given split)"
        )
    if task.split == "given" or (task.split == "auto" and data["splits"] is not None):
        if data["splits"] is None:
            raise InputDataError(
                f"task '{task.name}' asks for the given split but dataset '{task.dataset}' has no "
                "split column; add one to its CSV (split_column) or set split: derived"
            )
        split = given_split(data["splits"])
        check_groups_disjoint(split, data["groups"], f"task '{task.name}'")
    else:
        split = make_split(
            data["labels"],
            data["groups"],
            val_fraction=task.val_fraction,
            test_fraction=task.test_fraction,
            seed=task.split_seed,
        )
    _check_classes_in_parts(task, data, split)
    return split


def _check_classes_in_parts(task: TaskConfig, data: dict[str, Any], split: Split) -> None:
    """Every class needs training and test examples (and validation ones when there is a
    validation part); a class too small for that is an error, not a silently missing class."""
    labels, classes = data["labels"], data["classes"]
    parts = {"train": split.train, "test": split.test}
    if len(split.val):
        parts["val"] = split.val
    short = []
    for c, name in enumerate(classes):
        absent = [p for p, rows in parts.items() if not (labels[rows] == c).any()]
        if absent:
            short.append(f"'{name}' ({int((labels == c).sum())} images; none in {absent})")
    if short:
        raise InputDataError(
            f"task '{task.name}': class(es) {', '.join(short)} of dataset '{task.dataset}' are "
            f"too small to have examples in every part of the {split.source} split. Add images "
            "of those classes, merge or drop them (the dataset's 'query' filters CSV rows), or "
            "give a split column that places them."
        )
