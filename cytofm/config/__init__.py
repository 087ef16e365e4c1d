"""Typed, validated config: every key is a documented field of a dataclass in
:mod:`cytofm.config.sections`; the schema, ``config.yaml`` and the configuration reference are
generated from them (``cytofm config write``)."""

from cytofm.config.fields import MOVED, Section, check_moved, from_mapping, option
from cytofm.config.sections import *  # noqa: F403
from cytofm.config.sections import __all__ as _sections

__all__ = ["MOVED", "Section", "check_moved", "from_mapping", "option", *_sections]
