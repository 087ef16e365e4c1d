"""Where an MLflow store keeps its files, and the lock parallel jobs share it by."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

__all__ = ["file_lock", "store_of"]


@contextlib.contextmanager
def file_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def store_of(uri: str) -> tuple[Path | None, str | None]:
    """A SQLite store's lock file and artifact root (next to the database); None otherwise."""
    if not uri.startswith("sqlite:///"):
        return None, None
    db = Path(uri.removeprefix("sqlite:///"))
    return db.with_name(db.name + ".lock"), (db.parent / "mlflow-artifacts").resolve().as_uri()
