"""Inductive evaluation: pretraining never sees what an evaluation task tests on.

Two kinds of leak are possible. A labelled collection that is both pretrained on and evaluated:
its test rows (the split every protocol of the task uses) are left out of pretraining, per task
on that collection (:func:`held_out_rows`; decided in the pretraining job, where the split is
computed exactly as the evaluation computes it). Slides of a slide-level task, which
cross-validates over its whole cohort, so every cohort slide is a test slide once: a config
whose pretraining reads the cells or tiles of a cohort slide is refused before any job runs
(:func:`slide_leaks`, :func:`leak_message`). ``pretrain.transductive: true`` allows both; the
pretrained backbone's provenance and every result then say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["exposure", "held_out_rows", "leak_message", "slide_leaks"]


def held_out_rows(dataset_store: str | Path, tasks: Sequence) -> tuple[np.ndarray, dict]:
    """Rows of ``dataset_store`` in the test split of any of ``tasks`` (TaskConfig), sorted,
    and per task how many there are."""
    from cytofm.stages.evaluate import load_task_data, task_folds

    rows: set[int] = set()
    per_task = {}
    for task in tasks:  # a leave-one-out task tests every row of a held-out value
        tested = {int(r) for _, split in task_folds(task, load_task_data(task, dataset_store))
                  for r in split.test}  # fmt: skip
        rows.update(tested)
        per_task[task.name] = len(tested)
    return np.array(sorted(rows), dtype=np.int64), per_task


def slide_leaks(
    pretrain_slides: Iterable[str], cohorts: Mapping[str, Iterable[str]]
) -> dict[str, list[str]]:
    """Slide task -> the cohort slides that pretraining would read (empty tasks left out)."""
    seen = set(pretrain_slides)
    out = {}
    for task, slides in cohorts.items():
        both = sorted(s for s in slides if s in seen)
        if both:
            out[task] = both
    return out


def leak_message(leaks: Mapping[str, list[str]], stores: Mapping[str, str], sources) -> str:
    """The error for a config whose pretraining reads slides a slide task tests on."""
    parts = []
    for task, slides in leaks.items():
        shown = ", ".join(stores[s] for s in slides[:3]) + (" ..." if len(slides) > 3 else "")
        parts.append(
            f"slide task '{task}' cross-validates {len(slides)} slide(s) whose patches "
            f"pretraining reads ({shown})"
        )
    return (
        "; ".join(parts)
        + f". Pretraining (pretrain.sources {list(sources)}) must not see the slides a task "
        "tests on, or the pretrained backbone's results are inflated by exposure. Fix: give "
        "those slides a split that pretrain.splits leaves out (e.g. 'test' in the sample "
        "sheet's split column), pretrain on other slides or collections, or set "
        "pretrain.transductive: true to accept it (every result is then marked transductive)."
    )


def exposure(backbone_provenance: Mapping[str, Any] | None, kind: str, dataset: str | None):
    """What a backbone's pretraining saw of a task's data, for the result JSON."""
    if kind not in ("pretrained",):
        if kind == "random":
            return {"pretraining": "none (random weights)", "transductive": False}
        return {"pretraining": "external weights (their data is not known here)"}
    inductive = (backbone_provenance or {}).get("inductive") or {}
    transductive = bool(inductive.get("transductive", False))
    excluded = (inductive.get("excluded_rows") or {}).get(dataset or "", {})
    return {
        "pretraining": "this config's pretraining",
        "transductive": transductive,
        "dataset_pretrained_on": bool(dataset) and dataset in inductive.get("datasets", []),
        "test_rows_excluded": excluded.get("rows", 0),
        "excluded_for_tasks": excluded.get("tasks", {}),
    }
