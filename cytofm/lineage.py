"""Lineage: which runs produced a job's inputs, so any result traces back to its data.

Every artifact a stage writes carries a provenance record with the id of the job that wrote it
(see :func:`cytofm.provenance.bind_job`); the job's MLflow run carries the same id as the tag
``cytofm.job_id``. A downstream job reads those records from its inputs and keeps them: as MLflow
tags (``cytofm.input.<name>.job_id``), as a ``lineage.json`` artifact, and in the provenance of
its own outputs. Following the job ids from an evaluation result leads to its feature stores,
the backbone's pretraining run and the slides' tiling runs.

Only pipeline artifacts are read (zarr stores, exported backbones, result JSONs); raw inputs
(slides, sheets, truth tables) are not named here, so file names stay out of tracking.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cytofm.provenance import file_sha256

__all__ = ["artifact_record", "compact", "input_lineage", "lineage_tags"]

_TAG_LIMIT = 5000  # MLflow's tag value limit


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def artifact_record(path: str | Path) -> dict[str, Any] | None:
    """Who produced ``path``: stage, job id, invocation id, config hash and a checksum.

    The checksum is of the file for JSON results, of the weights for an exported backbone and
    of the root metadata (which holds the provenance) for a zarr store. None for anything the
    pipeline did not write.
    """
    p = Path(path)
    if (p / "zarr.json").is_file():
        meta = _read_json(p / "zarr.json") or {}
        prov = (meta.get("attributes") or {}).get("provenance")
        sha, of = file_sha256(p / "zarr.json"), "store metadata"
    elif (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        prov = (_read_json(p / "config.json") or {}).get("provenance")
        sha, of = file_sha256(p / "model.safetensors"), "weights"
    elif p.suffix == ".json" and p.is_file():
        data = _read_json(p)
        prov = data.get("provenance") if isinstance(data, dict) else None
        sha, of = file_sha256(p), "file"
    else:
        return None
    prov = prov if isinstance(prov, dict) else {}
    return {
        "artifact": p.name,
        "stage": prov.get("stage"),
        "job_id": prov.get("job_id"),
        "invocation_id": prov.get("invocation_id"),
        "config_hash": prov.get("config_hash"),
        "created_utc": prov.get("created_utc"),
        "sha256": sha,
        "sha256_of": of,
    }


def input_lineage(inputs: Mapping[str, str | Path | Sequence[str | Path]]) -> dict[str, list]:
    """Records of every pipeline artifact among a job's named inputs."""
    lineage: dict[str, list] = {}
    for name, value in inputs.items():
        paths = [value] if isinstance(value, str | Path) else list(value)
        records = [r for r in (artifact_record(v) for v in paths) if r is not None]
        if records:
            lineage[name] = records
    return lineage


def compact(lineage: Mapping[str, list]) -> dict[str, list]:
    """The part of the lineage that goes into output provenance: artifact, job id, checksum."""
    keep = ("artifact", "stage", "job_id", "sha256")
    return {name: [{k: r[k] for k in keep} for r in recs] for name, recs in lineage.items()}


def _joined(values: list[str]) -> str:
    text = ",".join(values)
    if len(text) <= _TAG_LIMIT:
        return text
    cut = text[: _TAG_LIMIT - 40].rsplit(",", 1)[0]
    return f"{cut},... (all in lineage.json)"


def lineage_tags(lineage: Mapping[str, list]) -> dict[str, str]:
    """MLflow tags: one input -> its job id, stage and checksum; several -> their job ids."""
    tags: dict[str, str] = {}
    for name, recs in lineage.items():
        prefix = f"cytofm.input.{name}"
        if len(recs) == 1:
            rec = recs[0]
            tags[f"{prefix}.job_id"] = str(rec["job_id"])
            tags[f"{prefix}.stage"] = str(rec["stage"])
            tags[f"{prefix}.sha256"] = str(rec["sha256"])
        else:
            job_ids = sorted({str(r["job_id"]) for r in recs})
            tags[f"{prefix}.count"] = str(len(recs))
            tags[f"{prefix}.job_ids"] = _joined(job_ids)
    return tags
