"""The result file every evaluation writes (``results/eval/<task>/<backbone>/<protocol>.json``):
its typed layout, its schema version, and the one writer and reader the stages, the summary
and the report go through.

Version 1 is the layout before files carried a version (read as is: the fields are the same);
version 2 adds ``schema``. A file of a version this code does not know is refused with the
version it has, the versions this code reads, and the command that writes it again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cytofm.errors import InputDataError
from cytofm.store import atomic_json

__all__ = ["RESULT_VERSION", "ResultFile", "ResultVersionError", "read_result", "write_result"]

SCHEMA_NAME = "cytofm.eval-result"
RESULT_VERSION = 2
READABLE = (1, 2)
RERUN = "snakemake --forcerun evaluate mil (with your usual --configfile)"


class ResultVersionError(InputDataError):
    """A result file of a layout this code does not read."""


@dataclasses.dataclass
class Block:
    """One setting's results: shots (None = all labels) or a fraction, per-seed runs and their
    summary (mean, std and CI per metric)."""

    shots: int | None
    summary: dict[str, dict[str, Any]]
    runs: list[dict[str, Any]]


@dataclasses.dataclass
class ResultFile:
    """What every result file holds; slide tasks (``level: slide``) add their cohort, folds and
    attention scores in the optional fields."""

    task: str
    dataset: str | None
    backbone: str
    protocol: str
    classes: list[str]
    split: dict[str, Any]
    results: list[Block]
    skipped: list[Any]
    seconds: float
    provenance: dict[str, Any]
    backbone_kind: str = ""
    exposure: dict[str, Any] = dataclasses.field(default_factory=dict)
    level: str = "patch"
    optional: dict[str, Any] = dataclasses.field(default_factory=dict)  # every other field

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "result") -> ResultFile:
        fields = {f.name for f in dataclasses.fields(cls)} - {"optional"}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise InputDataError(f"{where}: a result file needs {missing}; rerun it: {RERUN}")
        for name, kind in (("task", str), ("backbone", str), ("protocol", str)):
            if not isinstance(data[name], kind):
                raise InputDataError(f"{where}: '{name}' must be a {kind.__name__}")
        if not isinstance(data["results"], list):
            raise InputDataError(f"{where}: 'results' must be a list of result blocks")
        blocks = []
        for i, b in enumerate(data["results"]):
            lacking = [k for k in ("shots", "summary", "runs") if k not in b]
            if lacking:
                raise InputDataError(f"{where}: results[{i}] lacks {lacking}; rerun it: {RERUN}")
            blocks.append(Block(b["shots"], b["summary"], b["runs"]))
        known = {k: v for k, v in data.items() if k in fields and k != "results"}
        rest = {k: v for k, v in data.items() if k not in fields and k != "schema"}
        return cls(**known, results=blocks, optional=rest)


def _version(data: dict[str, Any], where: str) -> int:
    schema = data.get("schema")
    if schema is None:
        return 1
    if not isinstance(schema, dict) or schema.get("name") != SCHEMA_NAME:
        raise ResultVersionError(f"{where} is not a cytofm result file (schema {schema!r})")
    return int(schema.get("version", 0))


def write_result(path: str | Path, result: dict[str, Any], default=None) -> dict[str, Any]:
    """Check ``result`` against :class:`ResultFile` and write it with its schema version."""
    ResultFile.from_dict(result, str(path))
    data = {"schema": {"name": SCHEMA_NAME, "version": RESULT_VERSION}, **result}
    atomic_json(path, data, default=default)
    return data


def read_result(path: str | Path) -> dict[str, Any]:
    """The result file as a mapping, after checking its version and layout."""
    data = json.loads(Path(path).read_text())
    version = _version(data, str(path))
    if version not in READABLE:
        raise ResultVersionError(
            f"{path} is a result file of version {version}; this cytofm reads versions "
            f"{list(READABLE)}. Write it again with this version: {RERUN}"
        )
    ResultFile.from_dict(data, str(path))
    return data
