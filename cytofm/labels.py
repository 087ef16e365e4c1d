"""Checks on class labels where they enter the pipeline (sample sheets, image collections).

A typo in a label column ('abnromal' for 'abnormal') would silently become a class of its own
and skew every metric, so labels are checked before any job trains on them: against the
classes the config declares, or, when none are declared, for names that look like a
misspelling of a much more frequent class (one typed edit away, or the same name in another
case or spelling of separators).
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from cytofm.errors import InputDataError

__all__ = ["as_str_array", "check_labels", "suspected_typos"]

# A rare class one edit away from a class at least 1/RARE times as frequent is a suspected typo.
RARE = 0.2
# Names shorter than this are too close by nature ('LSIL'/'HSIL', 'CIN1'/'CIN2') to guess.
MIN_LEN = 5


def as_str_array(values) -> np.ndarray:
    """Any string array (numpy StringDType from zarr, object, unicode) -> numpy unicode."""
    return np.array([str(v) for v in np.asarray(values, dtype=object).ravel()], dtype=str)


def _norm(label: str) -> str:
    return " ".join(label.casefold().replace("_", " ").replace("-", " ").split())


def _one_edit(a: str, b: str) -> bool:
    """True when ``b`` is ``a`` with one character inserted, deleted, replaced, or two
    neighbours swapped (optimal string alignment distance 1)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diff) == 1:
            return True
        i = diff[0]
        return len(diff) == 2 and diff[1] == i + 1 and a[i] == b[i + 1] and a[i + 1] == b[i]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = next((k for k, (x, y) in enumerate(zip(short, long, strict=False)) if x != y), len(short))
    return short[i:] == long[i + 1 :]


def suspected_typos(counts: Counter) -> dict[str, str]:
    """label -> the class it probably misspells: the same name up to case, spaces, '_' and
    '-'; or, for names of MIN_LEN or more letters, one edit (not of a digit: 'grade1' and
    'grade2' are different classes) from a class at least 1/RARE times as frequent."""
    found = {}
    for label, n in counts.items():
        for other, m in counts.items():
            if other == label or m < n:
                continue
            a, b = _norm(label), _norm(other)
            same = a == b
            digits_only = "".join(c for c in a if not c.isdigit()) == "".join(
                c for c in b if not c.isdigit()
            )
            close = min(len(a), len(b)) >= MIN_LEN and _one_edit(a, b) and not digits_only
            if same or (close and n <= RARE * m):
                found[label] = other
                break
    return found


def check_labels(
    labels: Sequence[str],
    ids: Sequence[str],
    *,
    source: str,
    key: str,
    declared: Sequence[str] = (),
) -> None:
    """Raise :class:`InputDataError` naming the rows and the fix for unexpected labels.

    ``ids`` names each row (slide ids, image paths); ``source`` is the file the labels come
    from; ``key`` the config section whose ``classes`` list declares the expected labels.
    """
    labels = [str(v) for v in labels]
    counts = Counter(labels)
    if declared:
        unknown = sorted(set(counts) - {str(c) for c in declared})
        if unknown:
            rows = [i for i, v in zip(ids, labels, strict=True) if v in unknown]
            hints = {
                u: difflib.get_close_matches(u, [str(c) for c in declared], n=1, cutoff=0.6)
                for u in unknown
            }
            hint = "; ".join(f"'{u}' -> '{h[0]}'?" for u, h in hints.items() if h)
            raise InputDataError(
                f"{source}: label(s) {unknown} are not among the classes {list(declared)} "
                f"declared in {key}.classes (rows: {rows[:5]}{' ...' if len(rows) > 5 else ''})"
                f"{'; ' + hint if hint else ''}. Fix the label(s) in {source}, or add the class "
                f"to {key}.classes."
            )
        return
    typos = suspected_typos(counts)
    if typos:
        parts = []
        for label, other in typos.items():
            rows = [i for i, v in zip(ids, labels, strict=True) if v == label]
            parts.append(
                f"'{label}' ({counts[label]} row(s): {rows[:3]}{' ...' if len(rows) > 3 else ''})"
                f" looks like a misspelling of '{other}' ({counts[other]} rows)"
            )
        raise InputDataError(
            f"{source}: {'; '.join(parts)}. Fix the label(s) in {source}, or, if they are real "
            f"classes, list every class under {key}.classes (e.g. classes: "
            f"{sorted(counts)}) to accept them."
        )
