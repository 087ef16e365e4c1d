"""Generate the JSON schema, the commented ``config.yaml`` and ``docs/configuration.md`` from the
config dataclasses, so that the dataclasses are the only place a key is defined.

``cytofm config write`` rewrites the three files; ``--check`` fails when one is
stale (a test runs the same comparison).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cytofm.config.fields import entry_type, hints, json_types, section_type
from cytofm.config.sections import Config

__all__ = ["FILES", "config_yaml", "generated", "reference_md", "schema"]

_HEADER = """\
# cytofm configuration. Every key is validated against workflow/schemas/config.schema.yaml
# before any job runs; docs/configuration.md explains each one. Spatial sizes are in
# micrometres (um) or in pixels at a stated resolution in micrometres per pixel (mpp). The
# defaults run the built-in synthetic demo, sized for a laptop CPU.
# Generated from cytofm/config/ by `cytofm config write`: edit there.
"""
_COLUMN = 24  # comments start here when the key and value leave room


# ----------------------------------------------------------------------------------- schema


def _field_schema(cls: type, f: dataclasses.Field) -> dict:
    tp = hints(cls)[f.name]
    m = f.metadata
    sub, entry = section_type(tp), entry_type(tp)
    if entry is not None:
        out: dict[str, Any] = {
            "type": "object",
            "additionalProperties": _class_schema(entry, named=True),
        }
    elif sub is not None:
        out = _class_schema(sub)
        if "null" in json_types(tp):
            out["type"] = ["object", "null"]
    else:
        types = json_types(tp)
        out = {"type": types[0] if len(types) == 1 else types}
        if "array" in types:
            item = m.get("items") or ("number" if m.get("length") else "string")
            out["items"] = {"type": item}
            if m.get("choices"):
                out["items"]["enum"] = list(m["choices"])
            if m.get("length"):
                out["minItems"] = out["maxItems"] = m["length"]
        elif m.get("choices"):
            out["enum"] = list(m["choices"])
        for key, name in (
            ("minimum", "minimum"),
            ("maximum", "maximum"),
            ("above", "exclusiveMinimum"),
            ("below", "exclusiveMaximum"),
        ):
            if m.get(key) is not None:
                out[name] = m[key]
    has_default = (
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    )
    if has_default and not (sub is not None and _default(f) is None):  # optional section: none
        out["default"] = _plain(_default(f))
    if m.get("doc"):
        out["description"] = m["doc"]
    return out


def _class_schema(cls: type, named: bool = False) -> dict:
    """A section's schema; ``named``: an entry of a mapping, whose ``name`` is its key."""
    fields = [f for f in dataclasses.fields(cls) if not (named and f.name == "name")]
    out: dict[str, Any] = {"type": "object", "additionalProperties": False}
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if required:
        out["required"] = required
    out["properties"] = {f.name: _field_schema(cls, f) for f in fields}
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _plain(value: Any) -> Any:
    """A default as YAML/JSON holds it (sections as mappings of their defaults)."""
    if dataclasses.is_dataclass(value):
        return {}  # filled key by key from the nested properties' defaults
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def schema() -> dict:
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    out["description"] = (
        "cytofm configuration (config.yaml). Generated from cytofm/config/ by "
        "`cytofm config write`: edit there."
    )
    out.update(_class_schema(Config))
    return out


def schema_yaml() -> str:
    return yaml.safe_dump(schema(), sort_keys=False, width=100, allow_unicode=True)


# ------------------------------------------------------------------------------ config.yaml


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = np.format_float_positional(value, trim="0")
        return text if float(text) == value else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if re.fullmatch(r"[A-Za-z_/][\w.\-/:]*", value) and value not in (
            "true",
            "false",
            "null",
            "yes",
            "no",
        ):
            return value
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r}")


def _line(indent: int, key: str, value: str | None, doc: str, prefix: str = "") -> str:
    text = f"{prefix}{'  ' * indent}{key}:" + (f" {value}" if value is not None else "")
    if not doc:
        return text
    pad = max(_COLUMN - len(text), 1) if len(text) < _COLUMN else 2
    return f"{text}{' ' * pad}# {doc}"


def _entries(cls: type, values: dict, indent: int, prefix: str = "") -> list[str]:
    """Named entries (tasks, backbones, datasets) with the keys each sets."""
    docs = {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}
    lines = []
    for name, entry in values.items():
        lines.append(_line(indent, name, None, cls.__doc__.split("\n")[0], prefix))
        for key, value in entry.items():
            lines.append(_line(indent + 1, key, _scalar(value), docs[key], prefix))
    return lines


def _section_lines(cls: type, indent: int) -> list[str]:
    lines = []
    for f in dataclasses.fields(cls):
        tp = hints(cls)[f.name]
        doc = f.metadata.get("doc", "")
        sub, entry = section_type(tp), entry_type(tp)
        if entry is not None:
            shipped = f.metadata.get("shipped")
            lines.append(_line(indent, f.name, None if shipped else "{}", doc))
            if shipped:
                lines += _entries(entry, shipped, indent + 1)
            if f.metadata.get("example"):
                lines += _entries(entry, f.metadata["example"], indent + 1, prefix="#")
        elif sub is not None and _default(f) is None:
            continue  # optional per-rule settings: documented in the reference
        elif sub is not None:
            lines.append(_line(indent, f.name, None, doc))
            lines += _section_lines(sub, indent + 1)
        else:
            lines.append(_line(indent, f.name, _scalar(_plain(_default(f))), doc))
            example = f.metadata.get("example")
            if example:
                for rule, values in example.items():
                    lines.append(
                        _line(
                            indent,
                            rule,
                            _scalar(values),
                            "per rule: threads, memory (MB), minutes; gpus (pretrain only)",
                            prefix="#",
                        )
                    )
    return lines


def config_yaml() -> str:
    """config.yaml: every key at its default, the demo's tasks and backbones, commented
    examples; a blank line before each section."""
    lines = _section_lines(Config, 0)
    body: list[str] = []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        top = not line.startswith((" ", "#"))
        if body and top and (nxt.startswith((" ", "#")) or body[-1].startswith((" ", "#"))):
            body.append("")
        body.append(line)
    return _HEADER + "\n" + "\n".join(body) + "\n"


# ------------------------------------------------------------------- docs/configuration.md

_REFERENCE_HEAD = """\
# Configuration

`config.yaml` is the default run and comments every key in place. The keys, their types,
defaults, allowed values and meaning are defined once, in the dataclasses of `cytofm/config/`;
this page, `config.yaml` and the schema (`workflow/schemas/config.schema.yaml`) are generated
from there (`cytofm config write`; a test fails when one is stale).

Settings are grouped by topic (`pretrain.optim.lr`, `evaluate.lora.rank`, ...), so an overlay
of a few lines changes a recipe. A key from before the grouping (`pretrain.lr`) fails with a
message naming its new place. `<name>` stands for an entry's name of your choice.
"""


def _cell(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    return "`" + _scalar(value).replace("|", "\\|") + "`"


def _rows(cls: type, path: str) -> list[str]:
    rows, optional = [], None
    for f in dataclasses.fields(cls):
        if f.name == "name" and path.endswith("<name>"):
            continue
        tp = hints(cls)[f.name]
        key = f"{path}.{f.name}" if path else f.name
        sub, entry = section_type(tp), entry_type(tp)
        doc = f.metadata.get("doc", "").replace("|", "\\|")
        more = f.metadata.get("more", "")
        meaning = f"{doc}. {more}".strip() if more else doc
        if entry is not None:
            shipped = f.metadata.get("shipped")
            if shipped:
                meaning += f" (`config.yaml` sets {', '.join(f'`{n}`' for n in shipped)})"
            rows.append(f"| `{key}` | `{{}}` | {meaning} |")
            rows += _rows(entry, f"{key}.<name>")
        elif sub is not None and _default(f) is None:
            rows.append(f"| `{key}` | see meaning | {meaning} |")
            optional = sub
        elif sub is not None:
            rows += _rows(sub, key)
        else:
            default = _default(f)
            shown = dataclasses.MISSING if default is dataclasses.MISSING else _plain(default)
            rows.append(f"| `{key}` | {_cell(shown)} | {meaning} |")
    if optional is not None:  # the keys of the optional per-rule sections, once
        rows += _rows(optional, f"{path}.<rule>")
    return rows


def reference_md() -> str:
    out = [_REFERENCE_HEAD]
    for f in dataclasses.fields(Config):
        tp = hints(Config)[f.name]
        sub, entry = section_type(tp), entry_type(tp)
        title = f.name if (sub or entry) else None
        if title is None:
            continue
        doc = f.metadata.get("doc", "")
        if f.metadata.get("shipped"):
            doc += f" (`config.yaml` sets {', '.join(f'`{n}`' for n in f.metadata['shipped'])})"
        out.append(f"## `{title}`\n\n{doc}\n")
        out.append("| key | default | meaning |\n|---|---|---|")
        if entry is not None:
            out.append("\n".join(_rows(entry, f"{f.name}.<name>")) + "\n")
        else:
            out.append("\n".join(_rows(sub, f.name)) + "\n")
    top = [
        f
        for f in dataclasses.fields(Config)
        if not (section_type(hints(Config)[f.name]) or entry_type(hints(Config)[f.name]))
    ]
    rows = [f"| `{f.name}` | {_cell(_default(f))} | {f.metadata['doc']} |" for f in top]
    out.insert(
        1, "## Top level\n\n| key | default | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    return "\n".join(out)


FILES = {
    "workflow/schemas/config.schema.yaml": schema_yaml,
    "config.yaml": config_yaml,
    "docs/configuration.md": reference_md,
}


def generated(root: Path) -> dict[Path, str]:
    """Each generated file's path under ``root`` and the text it should hold."""
    return {root / rel: make() for rel, make in FILES.items()}
