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

Names can lie, so pretraining also records what it read by content (:func:`read_content`,
beside the exported backbone): each dataset image's pixel fingerprint (computed at import) and
each slide file's SHA-256. Evaluation jobs check their test images (:func:`check_test_rows`)
and slide tasks their cohort slides (:func:`check_cohort`) against that record, so a split
changed after pretraining, or one picture imported under two names, cannot leak unnoticed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CONTENT_FILE",
    "check_cohort",
    "check_test_rows",
    "content_leak_message",
    "content_leaks",
    "content_summary",
    "dataset_aliases",
    "exposure",
    "held_out_rows",
    "leak_message",
    "load_content",
    "read_content",
    "slide_leaks",
    "write_content",
]


def held_out_rows(dataset_store: str | Path, tasks: Sequence) -> tuple[np.ndarray, dict]:
    """Rows of ``dataset_store`` in the test split of any of ``tasks`` (TaskConfig), sorted,
    and per task how many there are."""
    from cytofm.eval.tasks import load_task_data, task_folds

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
        if kind == "morphometry":
            return {"pretraining": "none (hand-made measurements)", "transductive": False}
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


# --- what pretraining read, by content --------------------------------------------------------

CONTENT_FILE = "content_read.npz"  # beside the exported backbone's config.json


def _slide_hash(store) -> str:
    """The SHA-256 of the slide file a cells or tiles store was cut from ('' if unknown)."""
    return str((store.attrs.get("provenance") or {}).get("slide_sha256") or "")


def read_content(paths: Sequence[str | Path], keep: Sequence[np.ndarray]) -> dict[str, Any]:
    """Fingerprints of what pretraining reads from each store (``keep[i]``: the rows of store
    ``i`` it may read): every dataset image's ``pixel_hash`` and every slide file's SHA-256;
    stores that carry neither (imported by an older version) are counted as unchecked."""
    from cytofm.store import open_store

    pixels, slides, unchecked = [], set(), []
    for path, rows in zip(paths, keep, strict=True):
        store = open_store(path)
        if "pixel_hash" in store:
            pixels.append(np.asarray(store["pixel_hash"][:], np.uint64)[np.asarray(rows, bool)])
        elif _slide_hash(store):
            if np.asarray(rows, bool).any():
                slides.add(_slide_hash(store))
        else:
            unchecked.append(Path(path).name)
    hashes = np.unique(np.concatenate(pixels)) if pixels else np.zeros(0, np.uint64)
    return {"pixel_hash": hashes, "slide_sha256": sorted(slides), "unchecked": unchecked}


def write_content(folder: str | Path, content: Mapping[str, Any]) -> None:
    """Write :func:`read_content`'s record into ``folder`` (the exported backbone's)."""
    np.savez_compressed(
        Path(folder) / CONTENT_FILE,
        pixel_hash=np.asarray(content["pixel_hash"], np.uint64),
        slide_sha256=np.asarray(content["slide_sha256"], dtype=str),
    )


def content_summary(content: Mapping[str, Any]) -> dict[str, Any]:
    """What the backbone's provenance says of :func:`read_content`'s record."""
    return {
        "file": CONTENT_FILE,
        "images": int(len(content["pixel_hash"])),
        "slides": len(content["slide_sha256"]),
        "unchecked_stores": list(content["unchecked"]),
    }


def load_content(pretrained_dir: str | Path | None) -> dict[str, Any] | None:
    """The record :func:`write_content` left beside a backbone, or None if there is none."""
    if not pretrained_dir or not (Path(pretrained_dir) / CONTENT_FILE).is_file():
        return None
    with np.load(Path(pretrained_dir) / CONTENT_FILE, allow_pickle=False) as z:
        return {"pixel_hash": z["pixel_hash"], "slide_sha256": set(z["slide_sha256"].tolist())}


_FIX = (
    "Pretraining must not read what an evaluation tests on. Fix: rerun pretraining so it "
    "leaves these out (keep each image once, in one dataset; each slide file once in the "
    "sheet), "
    "pretrain on other data, or set pretrain.transductive: true to accept it (results are "
    "then marked transductive)."
)


def check_test_rows(
    task: str, dataset_store: str | Path, rows: np.ndarray, pretrained_dir, transductive: bool
) -> dict[str, Any]:
    """Refuse an evaluation whose test rows' pixels pretraining read (under any dataset name)
    unless transductive; returns what was checked, for the result's ``exposure``."""
    from cytofm.errors import InputDataError
    from cytofm.store import open_store

    content = load_content(pretrained_dir)
    store = open_store(dataset_store)
    if content is None or "pixel_hash" not in store:
        why = "no content record beside the backbone" if content is None else "no pixel_hash"
        return {"content_checked": False, "why": why}
    mine = np.asarray(store["pixel_hash"][:], np.uint64)[np.asarray(rows, np.int64)]
    seen = np.isin(mine, content["pixel_hash"])
    if seen.any() and not transductive:
        first = np.asarray(rows)[seen][:5].tolist()
        raise InputDataError(
            f"task '{task}': {int(seen.sum())} of its {len(rows)} test images were read by "
            f"pretraining ({Path(dataset_store).name} rows {first}"
            f"{' ...' if seen.sum() > 5 else ''}, matched by their pixels: the same picture "
            "under another dataset name, or a duplicate of a training image in this one). " + _FIX
        )
    return {"content_checked": True, "test_images_pretrained_on": int(seen.sum())}


def check_cohort(
    task: str, slides: Sequence[tuple[str, str | Path]], pretrained_dir, transductive: bool
) -> dict[str, Any]:
    """Refuse a slide task whose cohort slides' files pretraining read (by SHA-256, under any
    slide id) unless transductive. ``slides``: (slide_id, cells or tiles store)."""
    from cytofm.errors import InputDataError
    from cytofm.store import open_store

    content = load_content(pretrained_dir)
    if content is None:
        return {"content_checked": False, "why": "no content record beside the backbone"}
    read = content["slide_sha256"]
    seen = [sid for sid, store in slides if _slide_hash(open_store(store)) in read]
    if seen and not transductive:
        raise InputDataError(
            f"slide task '{task}': pretraining read the files of {len(seen)} cohort slide(s) "
            f"({', '.join(seen[:5])}{' ...' if len(seen) > 5 else ''}, matched by SHA-256). " + _FIX
        )
    return {"content_checked": True, "cohort_slides_pretrained_on": len(seen)}
