"""Named plug-ins: nucleus detectors, slide readers, backbone kinds, evaluation protocols.

Every registry lists cytofm's own implementations by import path (``module:attribute``), the
way an installed package declares its entry points, and finds any other name among the entry
points of installed packages, so a user adds a detector (or a reader, a backbone kind, a
protocol) from their own package without editing cytofm::

    # pyproject.toml of the user's package
    [project.entry-points."cytofm.detectors"]
    mydetector = "my_package.detect:make_detector"

and then sets ``cells.detector: mydetector``. A name is loaded the first time it is asked for;
checking that a name exists (``name in READERS``, what the config does) imports nothing, so the
config module depends on no implementation.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from cytofm.errors import ConfigError

__all__ = ["BACKBONE_KINDS", "DETECTORS", "PROTOCOLS", "READERS", "Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Name -> factory: cytofm's own (``builtin``: name -> ``"module:attribute"``), those
    registered in this process with :meth:`register`, and entry points of ``group``.

    ``what`` names the kind of plug-in in errors, ``key`` the config key that selects one.
    """

    def __init__(self, what: str, group: str, key: str, builtin: Mapping[str, str] | None = None):
        self.what, self.group, self.key = what, group, key
        self.builtin = dict(builtin or {})
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``factory`` under ``name``."""

        def decorator(factory: T) -> T:
            self._items[name] = factory
            return factory

        return decorator

    def __setitem__(self, name: str, factory: T) -> None:
        self._items[name] = factory

    def _entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        return {ep.name: ep for ep in importlib.metadata.entry_points(group=self.group)}

    def _find(self, name: str) -> T | None:
        if name in self._items:
            return self._items[name]
        if name in self.builtin:
            module, _, attr = self.builtin[name].partition(":")
            factory: Any = getattr(importlib.import_module(module), attr)
            self._items[name] = factory
            return factory
        ep = self._entry_points().get(name)
        if ep is None:
            return None
        try:
            factory = ep.load()
        except Exception as err:
            raise ConfigError(
                f"{self.key}: {name!r} is the entry point {ep.value!r} of group {self.group!r}, "
                f"which failed to load ({type(err).__name__}: {err}); fix or reinstall the "
                "package that provides it"
            ) from err
        self._items[name] = factory
        return factory

    def __getitem__(self, name: str) -> T:
        factory = self._find(name)
        if factory is None:
            raise ConfigError(
                f"{self.key}: no {self.what} named {name!r}; available: {self.names()}. "
                f'A package adds one with an entry point in [project.entry-points."{self.group}"]'
            )
        return factory

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is on offer, without importing it."""
        if not isinstance(name, str):
            return False
        return name in self._items or name in self.builtin or name in self._entry_points()

    def names(self) -> list[str]:
        """Every name on offer: built in, registered and entry points."""
        return sorted(set(self.builtin) | set(self._items) | set(self._entry_points()))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


# name -> ``open(path, slide_id, mpp) -> Slide`` (cytofm.wsi.reader.open_slide picks one)
READERS: Registry[Callable[..., Any]] = Registry(
    "slide reader",
    "cytofm.readers",
    "tiling.backend / cells.backend",
    {
        "openslide": "cytofm.wsi.backends:open_openslide",
        "tiatoolbox": "cytofm.wsi.backends:open_tiatoolbox",
        "image": "cytofm.wsi.backends:open_image",
        "fields": "cytofm.wsi.fields:open_fields",
        "zstack": "cytofm.wsi.zstack:open_zstack",
    },
)
# name -> ``factory(cells_config, background_rgb[, stain=...]) -> Detector``
DETECTORS: Registry[Callable[..., Any]] = Registry(
    "nucleus detector",
    "cytofm.detectors",
    "cells.detector",
    {
        "classical": "cytofm.cells.detect:classical_detector",
        "tiatoolbox": "cytofm.cells.learned:tiatoolbox_detector",
        "cellpose": "cytofm.cells.learned:cellpose_detector",
    },
)
# kinds other packages add: name -> ``factory(spec) -> nn.Module``; cytofm's own kinds (timm,
# random, cytofm, ...) are read by cytofm.eval.backbones itself
BACKBONE_KINDS: Registry[Callable[..., Any]] = Registry(
    "backbone kind", "cytofm.backbones", "backbones.<name>.kind"
)
# name -> a cytofm.eval.protocols.Protocol subclass
PROTOCOLS: Registry[type] = Registry(
    "evaluation protocol",
    "cytofm.protocols",
    "evaluate.tasks.<task>.protocols",
    {
        "linear": "cytofm.eval.protocols:Linear",
        "knn": "cytofm.eval.protocols:Knn",
        "fewshot": "cytofm.eval.protocols:FewShot",
        "lora": "cytofm.eval.protocols:Lora",
    },
)
