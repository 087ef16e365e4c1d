"""The machinery of the config dataclasses: documented fields, building a section from a mapping
(nested sections included), and the keys that moved when the sections were nested by topic.

Every key is defined once, as a field of a frozen dataclass in :mod:`cytofm.config.sections`
with its type, default, allowed values and a one-line doc; the JSON schema, the commented
``config.yaml`` and ``docs/configuration.md`` are generated from them
(:mod:`cytofm.config.generate`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from cytofm.errors import ConfigError
from cytofm.provenance import canonical

__all__ = ["MOVED", "Section", "check_moved", "from_mapping", "option"]

T = TypeVar("T")
_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    doc: str = "",
    *,
    choices: tuple | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    items: str | None = None,
    length: int | None = None,
    more: str = "",
    example: Any = None,
    shipped: Any = None,
    output: bool = True,
) -> Any:
    """A documented config field.

    ``doc`` is the one-line comment in ``config.yaml`` and the meaning in the reference, ``more``
    adds detail to the reference only. ``choices``, ``minimum``/``maximum`` (inclusive), ``above``
    (exclusive minimum), ``below`` (exclusive maximum), ``items`` (JSON type of list items) and
    ``length`` (fixed list length) go into the schema. ``example`` is a commented-out example in
    ``config.yaml``; ``shipped`` the entries ``config.yaml`` sets for a mapping that is empty by
    default (the demo's task, its backbones). ``output=False`` marks a key that decides whether or
    where a stage runs but not what it computes: it is left out of :meth:`Section.to_dict`, so
    changing it never reruns a job."""
    meta = {
        "doc": doc,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "above": above,
        "below": below,
        "items": items,
        "length": length,
        "more": more,
        "example": example,
        "shipped": shipped,
        "output": output,
    }
    if isinstance(default, (dict, list)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def hints(cls: type) -> dict[str, Any]:
    """Resolved field types of a config dataclass."""
    return typing.get_type_hints(cls)


def section_type(tp: Any) -> type | None:
    """The Section class a field holds (directly or ``X | None``), else None."""
    if isinstance(tp, type) and issubclass(tp, Section):
        return tp
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        for arg in typing.get_args(tp):
            if isinstance(arg, type) and issubclass(arg, Section):
                return arg
    return None


def entry_type(tp: Any) -> type | None:
    """The Section class of a ``dict[str, Section]`` field (named entries), else None."""
    if typing.get_origin(tp) is dict:
        args = typing.get_args(tp)
        if len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], Section):
            return args[1]
    return None


_JSON_NAMES = {
    int: "integer",
    float: "number",
    bool: "boolean",
    str: "string",
    tuple: "array",
    dict: "object",
    type(None): "null",
}


def json_types(tp: Any) -> list[str]:
    """The JSON types a field of Python type ``tp`` takes (what the schema says)."""
    args = getattr(tp, "__args__", None) if not hasattr(tp, "__dataclass_fields__") else None
    if args and tp.__class__.__name__ == "UnionType":
        return [t for a in args for t in json_types(a)]
    return [_JSON_NAMES.get(getattr(tp, "__origin__", tp), "object")]


def _is_json(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, (list, tuple))
    if kind == "null":
        return value is None
    return isinstance(value, (Mapping, Section))


def check_type(key: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> None:
    """A value against its field's type (and a list's entries against ``items``), named as the
    schema names them."""
    kinds = json_types(tp)
    if not any(_is_json(value, k) for k in kinds):
        raise ConfigError(
            f"config key '{key}' must be {' or '.join(kinds)}, got {value!r} "
            f"({type(value).__name__})"
        )
    item = meta.get("items")
    if item and isinstance(value, (list, tuple)):
        for v in value:
            if not _is_json(v, item):
                raise ConfigError(
                    f"config key '{key}' lists {item}s, got {v!r} ({type(v).__name__}) in "
                    f"{list(value)!r}"
                )


class Section:
    """Base of the config dataclasses. Built from a config file (:func:`from_mapping`), in code
    or by :meth:`updated`, every value is held to the bounds its field declares; a subclass's
    :meth:`check` adds what relates keys to each other (and plug-in names)."""

    # where the section sits in the config ("evaluate.lora", "evaluate.tasks.<name>"); set for
    # every section by :func:`name_sections`
    key: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        where = type(self).key.replace("<name>", str(getattr(self, "name", "<name>")))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check_bounds(
                _join(where or type(self).__name__, f.name), getattr(self, f.name), f.metadata
            )
        self.check()

    def check(self) -> None:
        """Checks between keys; single values are held to their declared bounds already."""

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping of what the section computes with (tuples as lists, as YAML and JSON
        hold them; keys marked ``output=False`` left out). Nested mappings have sorted keys,
        so writing the same config in another key order changes nothing downstream (Snakemake
        compares rule params as written)."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if not f.metadata.get("output", True):
                continue
            value = getattr(self, f.name)
            if isinstance(value, Section):
                value = value.to_dict()
            elif isinstance(value, dict):
                value = {k: v.to_dict() if isinstance(v, Section) else v for k, v in value.items()}
            out[f.name] = canonical(value)
        return out

    def updated(self: T, changes: Mapping[str, Any]) -> T:  # type: ignore[misc]
        """A copy with some keys changed, nested ones by dotted name
        (``cfg.updated({"optim.steps": 2, "seed": 1})``); checked like a new section."""
        direct: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            head, _, rest = key.partition(".")
            if rest:
                nested.setdefault(head, {})[rest] = value
            else:
                direct[head] = value
        for head, sub in nested.items():
            direct[head] = getattr(self, head).updated(sub)
        return dataclasses.replace(self, **direct)  # type: ignore[type-var]


def from_mapping(cls: type[T], mapping: Mapping[str, Any] | None, section: str = "") -> T:
    """Build a config dataclass from a (nested) mapping, refusing keys it does not know (naming
    the new place of a key that moved) and values of the wrong type or outside their field's
    bounds, naming the key, the value and what is allowed."""
    mapping = dict(mapping or {})
    label = section or cls.__name__
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - names)
    if unknown:
        for key in unknown:
            _raise_if_moved(_join(section, key))
        raise ConfigError(
            f"unknown key(s) {unknown} in config section '{label}'; allowed: {sorted(names)}"
        )
    types_ = hints(cls)
    metas = {f.name: f.metadata for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name, value in mapping.items():
        check_type(_join(section, name), value, types_[name], metas[name])
        check_bounds(_join(section, name), value, metas[name])
    for name, value in list(mapping.items()):
        sub, entry = section_type(types_[name]), entry_type(types_[name])
        if sub is not None and isinstance(value, Mapping):
            mapping[name] = from_mapping(sub, value, _join(section, name))
        elif entry is not None and isinstance(value, Mapping):
            mapping[name] = {
                k: from_mapping(entry, _named(entry, k, v), _join(section, name, k))
                for k, v in value.items()
            }
    return cls(**mapping)


def check_bounds(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    """A value against the bounds its field declares (``choices``, ``minimum``, ``maximum``,
    ``above``, ``below``; each entry of a list), the same bounds the schema is generated from: a
    config built without the schema is held to them too. Numeric bounds apply to numbers only (a
    field may also take a word such as 'auto'); None means unset."""
    choices, low, high, above, below = (
        meta.get(k) for k in ("choices", "minimum", "maximum", "above", "below")
    )
    if all(b is None for b in (choices, low, high, above, below)):
        return
    entries = list(value) if isinstance(value, (list, tuple)) else [value]
    for v in entries:
        if v is None or isinstance(v, Mapping):
            continue
        listed = isinstance(value, (list, tuple))
        where = f"config key '{key}'" + (f" (entry {v!r})" if listed else "")
        if choices is not None and not isinstance(v, (int, float)) and v not in choices:
            raise ConfigError(f"{where}: {v!r} is not one of {' | '.join(map(str, choices))}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if choices is not None and v not in choices:
            raise ConfigError(f"{where}: {v!r} is not one of {' | '.join(map(str, choices))}")
        if low is not None and v < low:
            raise ConfigError(f"{where} must be >= {low}, got {v!r}")
        if high is not None and v > high:
            raise ConfigError(f"{where} must be <= {high}, got {v!r}")
        if above is not None and v <= above:
            raise ConfigError(f"{where} must be > {above}, got {v!r}")
        if below is not None and v >= below:
            raise ConfigError(f"{where} must be < {below}, got {v!r}")


def name_sections(cls: type, key: str = "") -> None:
    """Record on each section class under ``cls`` where it sits in the config."""
    types_ = hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        sub, entry = section_type(types_[f.name]), entry_type(types_[f.name])
        if sub is not None:
            sub.key = _join(key, f.name)
            name_sections(sub, sub.key)
        elif entry is not None:
            entry.key = _join(key, f.name, "<name>")
            name_sections(entry, entry.key)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _named(entry: type, name: str, value: Any) -> dict:
    has_name = "name" in {f.name for f in dataclasses.fields(entry)}  # type: ignore[arg-type]
    return {"name": name, **(value or {})} if has_name else dict(value or {})


# Keys that moved when the flat sections were nested by topic: old -> new.
_PRETRAIN = {
    "model": ["arch", "model_args", "patch_size", "drop_path"],
    "crops": [
        "global_size",
        "local_size",
        "n_local",
        "global_scale",
        "local_scale",
        "keep_centre",
        "hed_sigma",
        "blur_prob",
    ],
    "masking": [("mask_ratio", "ratio"), ("mask_probability", "probability")],
    "heads": [
        "out_dim",
        "patch_out_dim",
        ("shared_head", "shared"),
        ("head_hidden_dim", "hidden_dim"),
        ("head_bottleneck_dim", "bottleneck_dim"),
    ],
    "loss": ["ibot_weight", "koleo_weight", "student_temp"],
    "optim": [
        "batch_size",
        "steps",
        "warmup_steps",
        "lr",
        "min_lr",
        "weight_decay",
        "weight_decay_end",
        "clip_grad",
        "freeze_last_layer_steps",
    ],
    "teacher": [
        "momentum",
        "momentum_end",
        ("teacher_temp", "temp"),
        ("teacher_temp_warmup", "temp_warmup"),
        ("teacher_temp_warmup_steps", "temp_warmup_steps"),
        "center_momentum",
    ],
    "probe": [("knn_dataset", "dataset"), ("knn_every", "every"), ("knn_k", "k")],
}
_EVALUATE = {
    "linear": [("linear_Cs", "Cs"), ("linear_max_iter", "max_iter")],
    "knn": [("knn_k", "k")],
    "lora": [
        *[
            (f"lora_{k}", k)
            for k in (
                "rank",
                "alpha",
                "dropout",
                "target_modules",
                "lrs",
                "batch_size",
                "iters_per_shot",
                "fraction_epochs",
                "warmup_steps",
                "min_lr",
                "max_steps",
                "weight_decay",
                "fractions",
            )
        ],
        "device",
        "precision",
    ],
    "mil": [
        (f"mil_{k}", k)
        for k in (
            "lr",
            "weight_decay",
            "max_epochs",
            "min_epochs",
            "patience",
            "batch_bags",
            "hidden",
            "attn_dim",
            "dropout",
            "balance",
            "top_k",
        )
    ],
}


def _moves(section: str, table: dict) -> dict[str, str]:
    out = {}
    for sub, keys in table.items():
        for key in keys:
            old, new = key if isinstance(key, tuple) else (key, key)
            out[f"{section}.{old}"] = f"{section}.{sub}.{new}"
    return out


MOVED: dict[str, str] = {**_moves("pretrain", _PRETRAIN), **_moves("evaluate", _EVALUATE)}


def _raise_if_moved(path: str) -> None:
    if path in MOVED:
        new = MOVED[path]
        *parents, leaf = new.split(".")
        nested = "".join(f"\n{'  ' * i}{p}:" for i, p in enumerate(parents))
        raise ConfigError(
            f"config key '{path}' is now '{new}' (settings are grouped by topic; "
            f"docs/configuration.md lists every key). Write it as:{nested}\n"
            f"{'  ' * len(parents)}{leaf}: ..."
        )


def check_moved(config: Mapping[str, Any]) -> None:
    """Refuse a config that still uses a key from before the sections were nested, naming the
    key's new place (the schema's own message would only say the key is not allowed)."""
    for section in ("pretrain", "evaluate"):
        for key in config.get(section) or {}:
            _raise_if_moved(f"{section}.{key}")
    pretrain = config.get("pretrain") or {}
    if "seed" in pretrain:
        raise ConfigError(
            f"config key 'pretrain.seed' is now a list, 'pretrain.seeds' (one pretraining run "
            f"per seed). Write it as:\npretrain:\n  seeds: [{pretrain['seed']}]"
        )
