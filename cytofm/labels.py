"""Checks on class labels where they enter the pipeline (sample sheets, image collections).

A typo in a label column ('abnromal' for 'abnormal') would silently become a class of its own
and skew every metric, so labels are checked before any job trains on them: against the
classes the config declares, or, when none are declared, for names that look like a
misspelling of a much more frequent class.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence

from cytofm.errors import InputDataError

__all__ = ["check_labels", "suspected_typos"]

# Similarity (difflib ratio) above which a rare class is taken for a misspelling of a common
# one; Bethesda-style names that differ in one letter class ('LSIL'/'HSIL', 0.75) stay below.
SIMILAR = 0.85
# A suspected typo is at most this share of the class it resembles.
RARE = 0.2


def _norm(label: str) -> str:
    return " ".join(label.casefold().replace("_", " ").replace("-", " ").split())


def suspected_typos(counts: Counter) -> dict[str, str]:
    """label -> the class it probably misspells: same name up to case, spaces, '_' and '-',
    or a close spelling (ratio >= SIMILAR) of a class at least 1/RARE times as frequent."""
    found = {}
    for label, n in counts.items():
        for other, m in counts.items():
            if other == label or m < n:
                continue
            same = _norm(label) == _norm(other)
            close = difflib.SequenceMatcher(None, _norm(label), _norm(other)).ratio() >= SIMILAR
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
