"""Zarr (v3) patch and tile stores: the one format every stage reads and writes.

A store is written to a temporary folder next to its destination and renamed into place only
when complete, so an interrupted job never leaves a half-written store that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from cytofm.errors import CytofmError
from cytofm.labels import as_str_array  # where the workflow's plan finds it without zarr
from cytofm.store_attrs import check_version

__all__ = [
    "BackgroundWriter",
    "PatchStoreWriter",
    "StoreError",
    "as_str_array",
    "atomic_group",
    "atomic_json",
    "open_store",
    "read_table",
    "write_strings",
]


@contextlib.contextmanager
def atomic_group(path: str | Path) -> Iterator[zarr.Group]:
    """Create a zarr group at a temporary path; move it to ``path`` on success only."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of a writer killed before its rename (SIGKILL, node failure): never read as
    # a store (their name is not the output's), removed when the output is written again.
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    try:
        yield group
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def atomic_json(path: str | Path, obj: Any, default=None) -> None:
    """Write ``obj`` as JSON through a temporary file renamed into place (never half-written).

    ``default`` converts values json cannot (numpy scalars)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_suffix(final.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=default))
    tmp.replace(final)


class StoreError(CytofmError, RuntimeError):
    """A store exists but cannot be read (damaged metadata or chunk files)."""


def _corrupt(path: Path, what: str, exc: BaseException) -> StoreError:
    return StoreError(
        f"zarr store {path} is corrupt: {what} ({type(exc).__name__}: {exc}). Delete it and "
        "rerun snakemake, which rebuilds it from its inputs (or run the producing rule with "
        "--forcerun)."
    )


class _CheckedArray:
    """A read-only zarr array whose read errors name the store and the fix."""

    _READS = ("get_orthogonal_selection", "get_basic_selection", "get_coordinate_selection")

    def __init__(self, array: zarr.Array, store: Path, name: str):
        self._array, self._store, self._name = array, store, name

    def __getitem__(self, selection):
        return self._read(self._array.__getitem__, selection)

    def _read(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (IndexError, KeyError, TypeError):  # the caller's selection, not the store
            raise
        except Exception as exc:  # codec errors on damaged chunk files, unreadable files
            raise _corrupt(self._store, f"reading array '{self._name}' failed", exc) from exc

    def __getattr__(self, attr):
        value = getattr(self._array, attr)
        if attr in self._READS:
            return lambda *a, **k: self._read(value, *a, **k)
        return value

    def __len__(self) -> int:
        return self._array.shape[0]

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype)


class _CheckedGroup:
    """A read-only zarr group handing out :class:`_CheckedArray` members."""

    def __init__(self, group: zarr.Group, path: Path):
        self._group, self._path = group, path

    def __getitem__(self, name: str):
        try:
            member = self._group[name]
        except KeyError:
            raise
        except Exception as exc:
            raise _corrupt(self._path, f"the metadata of '{name}' cannot be read", exc) from exc
        if isinstance(member, zarr.Array):
            return _CheckedArray(member, self._path, name)
        return _CheckedGroup(member, self._path / name)

    def __contains__(self, name: str) -> bool:
        return name in self._group

    def __iter__(self):
        return iter(self._group)

    def __getattr__(self, attr):
        return getattr(self._group, attr)


def open_store(path: str | Path) -> zarr.Group:
    """Open a finished store read-only, with a clear error when it is missing or damaged.

    Stores are renamed into place only when complete, so a store without ``zarr.json`` is
    never a finished one. Reads of damaged chunks raise :class:`StoreError` naming the store.
    """
    p = Path(path)
    if not (p / "zarr.json").is_file():
        raise FileNotFoundError(
            f"{p} is not a cytofm zarr store (no zarr.json). Re-run the stage that writes it "
            "(Snakemake does this when you ask for the file as a target)."
        )
    try:
        group = zarr.open_group(str(p), mode="r")
        attrs = group.attrs.asdict()
    except Exception as exc:
        raise _corrupt(p, "its zarr.json cannot be parsed", exc) from exc
    check_version(attrs, str(p))  # a layout this code does not read fails here, saying so
    return _CheckedGroup(group, p)  # type: ignore[return-value]


def write_strings(group: zarr.Group, name: str, values: list[str]) -> zarr.Array:
    """A 1-D variable-length UTF-8 string array (the spec'd zarr v3 string type)."""
    arr = group.create_array(name, shape=(len(values),), chunks=(max(len(values), 1),), dtype=str)
    if values:
        arr[:] = np.asarray(values, dtype=object)
    return arr


def read_table(group: zarr.Group, names: list[str]) -> dict[str, np.ndarray]:
    """Read whole 1-D/2-D per-row arrays (coords, labels, ids...) into memory."""
    return {name: group[name][:] for name in names}


class BackgroundWriter:
    """Calls ``write(item)`` for each :meth:`put` item, in order, on one background thread,
    so compression and disk writes overlap the caller's work; at most ``pending`` items wait
    (memory stays bounded). An error in the thread is raised by the next :meth:`put` or by
    :meth:`close`, which waits for every item to be written."""

    def __init__(self, write: Callable[[Any], None], name: str, pending: int = 2):
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name=name, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as exc:  # raised in the caller's thread
                    self._error = exc

    def put(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


class PatchStoreWriter:
    """Append patches (uint8 RGB, fixed size) and per-row columns in chunks along N.

    Images are compressed with zstd at level 1: photographs of cells shrink by about 10%
    whatever the level, and level 1 writes (and reads) twice as fast as zarr's default 3.
    Columns are declared up front as ``name -> (dtype, trailing shape)``; strings use
    ``dtype=str``. Images are buffered until a whole chunk can be written, so image memory is
    bounded by ``chunk`` patches. Per-row columns (a few bytes a row) are kept in memory and
    written once on :meth:`close`, which saves a metadata rewrite per chunk. Whole chunks are
    compressed and written by a background thread; :meth:`close` waits for it and raises its
    error, if any.
    """

    def __init__(
        self,
        group: zarr.Group,
        patch_px: int,
        chunk: int,
        columns: Mapping[str, tuple[Any, tuple[int, ...]]],
    ):
        self.group = group
        self.chunk = chunk
        self.patch_px = patch_px
        self.images = group.create_array(
            "images",
            shape=(0, patch_px, patch_px, 3),
            chunks=(chunk, patch_px, patch_px, 3),
            dtype="uint8",
            dimension_names=["n", "y", "x", "c"],
            compressors=ZstdCodec(level=1),
        )
        self.columns = dict(columns)
        self._buf_images: list[np.ndarray] = []
        self._cols: dict[str, list[np.ndarray]] = {k: [] for k in self.columns}
        self._buffered = 0
        self.n = 0
        self._writer: BackgroundWriter | None = None

    def append(self, images: np.ndarray, **columns: np.ndarray) -> None:
        """Add rows: ``images`` (n, P, P, 3) uint8 and one array of length n per column."""
        n = len(images)
        if n == 0:
            return
        if images.shape[1:] != (self.patch_px, self.patch_px, 3) or images.dtype != np.uint8:
            raise ValueError(
                f"patches must be uint8 (n, {self.patch_px}, {self.patch_px}, 3), "
                f"got {images.dtype} {images.shape}"
            )
        if set(columns) != set(self.columns):
            raise ValueError(f"columns {sorted(columns)} != declared {sorted(self.columns)}")
        for name, values in columns.items():
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} rows, images have {n}")
            self._cols[name].append(np.asarray(values))
        self._buf_images.append(images)
        self._buffered += n
        if self._buffered >= self.chunk:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if self._buffered == 0:
            return
        images = np.concatenate(self._buf_images)
        # write whole chunks only (unless closing) so no chunk is rewritten
        n_write = len(images) if final else (len(images) // self.chunk) * self.chunk
        self._write(images[:n_write])
        self.n += n_write
        self._buf_images = [images[n_write:]] if n_write < len(images) else []
        self._buffered = len(images) - n_write

    def _write(self, images: np.ndarray) -> None:
        if self._writer is None:
            self._writer = BackgroundWriter(self.images.append, "patch-writer")
        self._writer.put(images)

    def close(self) -> int:
        """Write buffered images and every column; returns the number of rows."""
        self._flush(final=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for name, (dtype, tail) in self.columns.items():
            parts = self._cols[name]
            data = np.concatenate(parts) if parts else np.zeros((0, *tail))
            arr = self.group.create_array(
                name,
                shape=(self.n, *tail),
                chunks=(max(min(self.n, 1 << 16), 1), *tail),
                dtype=dtype,
            )
            if self.n:
                arr[:] = data.astype(object) if dtype is str else data.astype(dtype)
        return self.n
