"""Inductive evaluation: pretraining never sees what an evaluation task tests on.

Two kinds of leak are possible. A labelled collection that is both pretrained on and evaluated:
its test rows (the split every protocol of the task uses) are left out of pretraining, per task
on that collection (:func:`held_out_rows`; decided in the pretraining job, where the split is
computed exactly as the evaluation computes it). Slides of a slide-level task, which
cross-validates over its whole cohort, so every cohort slide is a test slide once: a config
whose pretraining reads the cells or tiles of a cohort slide is refused before any job runs
(:func:`slide_leaks`, :func:`leak_message`), and so is one whose pretraining reads a cohort
slide's file under another ``slide_id`` or another slide of a cohort slide's patient
(:func:`content_leaks`). Two dataset names for the same images are refused outright
(:func:`dataset_aliases`): a task's test rows left out under one name would be read under the
other. ``pretrain.transductive: true`` allows the slide leaks; the pretrained backbone's
provenance and every result then say so.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "content_leak_message",
    "content_leaks",
    "dataset_aliases",
    "exposure",
    "held_out_rows",
    "leak_message",
    "slide_leaks",
]


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


def _same_file(path) -> str:
    """A slide's path as one string per file (absolute, normalised; no file-system calls, so
    planning stays cheap for large sheets)."""
    return os.path.normpath(os.path.abspath(str(path))) if path else ""


def content_leaks(
    pretrained: Sequence[Mapping[str, Any]], cohorts: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, list[str]]:
    """Slide task -> what each of its cohort slides shares, under another ``slide_id``, with a
    slide pretraining reads: the same file (``path``) or the same patient (``patient_id``).
    Rows are sheet rows (``slide_id``, ``path``, optional ``patient_id``); a cohort slide that
    pretraining reads by name is :func:`slide_leaks`' to report."""
    names = {r["slide_id"] for r in pretrained}
    by_file: dict[str, str] = {}
    by_patient: dict[str, str] = {}
    for r in pretrained:
        by_file.setdefault(_same_file(r.get("path")), r["slide_id"])
        patient = str(r.get("patient_id") or "").strip()
        if patient:
            by_patient.setdefault(patient, r["slide_id"])
    by_file.pop("", None)
    out: dict[str, list[str]] = {}
    for task, rows in cohorts.items():
        found = []
        for r in rows:
            slide, patient = r["slide_id"], str(r.get("patient_id") or "").strip()
            if slide in names:
                continue
            twin = by_file.get(_same_file(r.get("path")))
            if twin is not None:
                found.append(f"'{slide}' is the file of pretrained slide '{twin}' ({r['path']})")
            elif patient in by_patient:
                found.append(
                    f"'{slide}' is of patient '{patient}', whose slide '{by_patient[patient]}' "
                    "pretraining reads"
                )
        if found:
            out[task] = found
    return out


def content_leak_message(leaks: Mapping[str, list[str]], sources) -> str:
    """The error for a cohort slide whose file or patient pretraining reads under another id."""
    parts = [
        f"slide task '{task}': " + "; ".join(found[:3]) + (" ..." if len(found) > 3 else "")
        for task, found in leaks.items()
    ]
    return (
        ". ".join(parts)
        + f". Pretraining (pretrain.sources {list(sources)}) must not see a test slide's file "
        "or another slide of its patient, or the pretrained backbone's results are inflated by "
        "exposure. Fix: list each file once in the sample sheet, put all of a patient's slides "
        "in one split (one that pretrain.splits leaves out for the cohort's patients), or set "
        "pretrain.transductive: true to accept it (every result is then marked transductive)."
    )


def dataset_aliases(datasets: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of dataset names that import the same images: the same file or folder (``path``)
    with the same ``query``."""
    seen: dict[tuple[str, str], str] = {}
    out = []
    for name, entry in datasets.items():
        key = (_same_file(entry.get("path")), str(entry.get("query") or ""))
        if key[0] and key in seen:
            out.append((seen[key], name))
        seen.setdefault(key, name)
    return out
