"""The sample sheet (``slides.tsv``): one row per slide, validated before any job runs."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cytofm.errors import InputDataError

__all__ = ["RESERVED_COLUMNS", "load_sheet", "validate_sheet"]

RESERVED_COLUMNS = ("slide_id", "path", "mpp", "patient_id", "split", "cell_truth")
_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
# A slide's files are named after its id plus these suffixes (qc/<id>.png beside
# qc/<id>.cells.png): an id ending in one would name another slide's file.
RESERVED_SUFFIXES = (".cells",)
# The ids as a regex without anchors: the workflow's wildcard constraint. A character class,
# not the list of the sheet's ids, whose length would make every file match cost as much as
# the cohort is large (planning then grows with the square of the slides).
ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._-]*" + "".join(
    f"(?<!{re.escape(s)})" for s in RESERVED_SUFFIXES
)


def _valid_id(value: str) -> bool:
    """Letters, digits, '._-'; not '.', '..' or hidden; never a path."""
    return (
        bool(_ID.match(value))
        and value not in (".", "..")
        and ".." not in value
        and not value.endswith(RESERVED_SUFFIXES)
    )


def validate_sheet(df: pd.DataFrame, source: str = "sample sheet") -> pd.DataFrame:
    """Check columns and values; return a copy with ``mpp`` as float (NaN where empty)."""
    missing = [c for c in ("slide_id", "path") if c not in df.columns]
    if missing:
        raise InputDataError(
            f"{source}: missing required column(s) {missing}; a sample sheet is a TSV with at "
            "least 'slide_id' and 'path' columns"
        )
    df = df.copy()
    df["slide_id"] = df["slide_id"].astype(str)
    # Ids become file and folder names: validated before any path is built from them.
    bad = [(i + 2, s) for i, s in enumerate(df["slide_id"]) if not _valid_id(s)]
    if bad:
        listed = ", ".join(f"line {line}: {s!r}" for line, s in bad[:5])
        raise InputDataError(
            f"{source}: invalid slide_id ({listed}{' ...' if len(bad) > 5 else ''}). Ids become "
            "file names, so they may hold only letters, digits and '._-', must not start with "
            "'.' or '-', must not end in '.cells' (a QC file's suffix), and are at "
            "most 128 characters; rename them in the sheet (e.g. 'case 01' -> 'case_01')."
        )
    dup_mask = df["slide_id"].duplicated(keep=False)
    if dup_mask.any():
        lines = {}
        for i, s in zip(df.index[dup_mask], df["slide_id"][dup_mask], strict=True):
            lines.setdefault(s, []).append(int(i) + 2)
        listed = "; ".join(f"{s!r} on lines {v}" for s, v in list(lines.items())[:5])
        raise InputDataError(
            f"{source}: duplicate slide_id ({listed}). Every slide needs its own id: rename "
            "one of them (e.g. append the scan number) or delete the repeated row."
        )
    if "mpp" not in df.columns:
        df["mpp"] = float("nan")
    mpp = pd.to_numeric(df["mpp"].replace("", float("nan")), errors="coerce")
    not_numeric = df.loc[mpp.isna() & df["mpp"].notna() & (df["mpp"].astype(str) != ""), "slide_id"]
    if len(not_numeric):
        raise InputDataError(
            f"{source}: 'mpp' of slide(s) {not_numeric.tolist()[:5]} is not a number; give "
            "micrometres per pixel (e.g. 0.25) or leave it empty to use the file's metadata"
        )
    if ((mpp <= 0) | (mpp > 100)).any():
        raise InputDataError(f"{source}: 'mpp' values must be in (0, 100] micrometres per pixel")
    df["mpp"] = mpp.astype(float)
    if "split" in df.columns:
        allowed = {"train", "val", "test", ""}
        wrong = sorted(set(df["split"].fillna("").astype(str)) - allowed)
        if wrong:
            raise InputDataError(f"{source}: 'split' values {wrong} not in train, val, test")
    return df


REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str) -> bool:
    """A URL (``s3://``, ``https://``, ``gs://`` ...): a file a Snakemake storage plugin fetches."""
    return bool(REMOTE.match(str(path)))


def load_sheet(path: str | Path) -> pd.DataFrame:
    """Read and validate a TSV sample sheet; relative file paths (``path``, ``cell_truth``) are
    taken from its folder."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(
            f"sample sheet not found: {path}. Set 'samples' in config.yaml to your slides.tsv, "
            "or set demo.enabled: true to run the synthetic demo"
        )
    df = pd.read_csv(path, sep="\t", dtype={"slide_id": str, "path": str}, keep_default_na=False)
    df = validate_sheet(df, source=str(path))
    for column in ("path", "cell_truth"):  # file columns; relative = from the sheet's folder
        if column in df.columns:
            df[column] = [
                p if (not p or is_remote(p) or Path(p).is_absolute()) else str(path.parent / p)
                for p in df[column].astype(str)
            ]
    return df
