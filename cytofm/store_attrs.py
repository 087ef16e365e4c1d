"""What each kind of store says about itself: the typed, versioned attributes of tile, cell,
dataset, feature and attention stores, and the one writer and reader the stages go through.

Every store written by this code carries ``schema: {name: cytofm.<kind>-store, version: 2}``.
A store without ``schema`` is version 1 (the same attributes, written before stores carried a
version) and is read as is. A store of a version this code does not read is refused with its
version, the versions this code reads and the command that writes it again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from cytofm.errors import InputDataError

__all__ = [
    "STORE_VERSION",
    "AttentionAttrs",
    "CellAttrs",
    "DatasetAttrs",
    "FeatureAttrs",
    "StoreVersionError",
    "TileAttrs",
    "check_version",
    "read_attrs",
    "store_attrs",
]

STORE_VERSION = 2
READABLE = (1, 2)
RERUN = {
    "tiles": "tile",
    "cells": "cells",
    "datasets": "import_dataset",
    "features": "embed",
    "attention": "mil",
}


class StoreVersionError(InputDataError):
    """A store of a layout this code does not read."""


@dataclasses.dataclass
class TileAttrs:
    """``results/tiles/<slide>.zarr``: the foreground tile grid of a slide."""

    slide_id: str
    slide_mpp: float
    tile_mpp: float
    tile_px: int
    tile_um: float
    mask_mpp: float
    background_rgb: list[float]
    provenance: dict[str, Any]
    coords: str = "level-0 pixel centres (x, y)"
    boxes: str = "level-0 pixels x0, y0, x1, y1"


@dataclasses.dataclass
class CellAttrs:
    """``results/cells/<slide>.zarr``: cell-centred patches of a slide."""

    slide_id: str
    slide_mpp: float
    mpp: float
    patch_um: float
    patch_px: int
    detector: str
    stain: dict[str, Any]
    provenance: dict[str, Any]
    coords: str = "level-0 pixel centres (x, y)"
    fields: list[dict] | None = None  # a specimen of fields: name and mosaic box of each
    bad_fields: list[dict] | None = None  # fields left out, with the reason


@dataclasses.dataclass
class DatasetAttrs:
    """``results/datasets/<name>.zarr``: an imported labelled collection."""

    name: str
    classes: list[str]
    class_counts: dict[str, int]
    mpp: float | None
    patch_px: int
    patch_um: float | None
    provenance: dict[str, Any]
    # CSV columns kept per image as ``meta_<column>`` string arrays (site, stain, scanner...)
    meta_columns: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class FeatureAttrs:
    """``results/features/<backbone>/<kind>/<store>.zarr``: one backbone's features of a store."""

    backbone: str
    n: int
    dim: int
    source_mpp: float | None
    provenance: dict[str, Any]


@dataclasses.dataclass
class AttentionAttrs:
    """``results/eval/<task>/<backbone>/abmil/attention.zarr``: per-slide attention."""

    backbone: str
    task: str
    seeds: list[int]


KINDS: dict[str, type] = {
    "tiles": TileAttrs,
    "cells": CellAttrs,
    "datasets": DatasetAttrs,
    "features": FeatureAttrs,
    "attention": AttentionAttrs,
}


def _schema_name(kind: str) -> str:
    return f"cytofm.{kind}-store"


def store_attrs(kind: str, **values: Any) -> dict[str, Any]:
    """The attributes a writer puts on a store of ``kind``, checked against its dataclass and
    stamped with the schema name and version."""
    attrs = KINDS[kind](**values)  # a missing or unknown attribute is a TypeError here
    return {
        "schema": {"name": _schema_name(kind), "version": STORE_VERSION},
        **dataclasses.asdict(attrs),
    }


def check_version(attrs: Mapping[str, Any], where: str) -> tuple[str | None, int]:
    """(kind, version) of a store's attributes; refuses a version this code does not read."""
    schema = attrs.get("schema")
    if schema is None:
        return None, 1
    name = schema.get("name", "") if isinstance(schema, Mapping) else ""
    kind = next((k for k in KINDS if _schema_name(k) == name), None)
    if kind is None:
        raise StoreVersionError(f"{where} is not a cytofm store (schema {schema!r})")
    version = int(schema.get("version", 0))
    if version not in READABLE:
        raise StoreVersionError(
            f"{where} is a {kind} store of version {version}; this cytofm reads versions "
            f"{list(READABLE)}. Write it again with this version: snakemake --forcerun "
            f"{RERUN[kind]} (with your usual --configfile)"
        )
    return kind, version


def read_attrs(group: Any, kind: str, where: str = "store") -> Any:
    """A store's attributes as the dataclass of ``kind`` (attributes it does not define, as
    version 1 stores may have, are left out; missing ones are an error naming the store)."""
    attrs = dict(group.attrs)
    found, _ = check_version(attrs, where)
    if found is not None and found != kind:
        raise InputDataError(f"{where} is a {found} store, not a {kind} store")
    cls = KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in attrs.items() if k in names})
    except TypeError as exc:
        raise InputDataError(
            f"{where} lacks attributes of a {kind} store ({exc}); write it again: snakemake "
            f"--forcerun {RERUN[kind]}"
        ) from None
