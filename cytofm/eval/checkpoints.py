"""Pretraining checkpoints as the top level of a result's variation.

With ``pretrain.seeds: [0, 1, 2]`` a configured backbone built on this config's pretraining
(``cytofm``, and its random control) is evaluated once per checkpoint, as ``cytofm``,
``cytofm_seed1``, ``cytofm_seed2``. Each result JSON describes its checkpoint; the task summary
and the paired comparisons pool a backbone's checkpoints (the plan's ``checkpoint_groups``:
backbone -> [configured name, checkpoint index]) so that a verdict is about the recipe, with
the checkpoints, then the evaluation seeds and the test items as its sources of variation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["family_of", "group_by_family"]


def family_of(backbone: str, checkpoints: Mapping[str, list] | None) -> tuple[str, int]:
    """(configured backbone, checkpoint index) of a result's backbone; a backbone the mapping
    does not name is its own family, checkpoint 0."""
    entry = (checkpoints or {}).get(backbone)
    return (str(entry[0]), int(entry[1])) if entry else (backbone, 0)


def group_by_family(
    results: Iterable[tuple[str | Path, dict]], checkpoints: Mapping[str, list] | None
) -> dict[tuple[str, str], list[tuple[int, str | Path, dict]]]:
    """(family, protocol) -> [(checkpoint index, path, result)] in checkpoint order."""
    out: dict[tuple[str, str], list] = {}
    for path, res in results:
        family, index = family_of(res["backbone"], checkpoints)
        out.setdefault((family, res["protocol"]), []).append((index, path, res))
    for members in out.values():
        members.sort(key=lambda m: m[0])
        indices = [m[0] for m in members]
        if len(set(indices)) != len(indices):
            names = [m[2]["backbone"] for m in members]
            raise ValueError(f"results {names} claim the same checkpoint of one backbone")
    return out
