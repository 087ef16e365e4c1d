"""Named plug-ins: nucleus detectors, slide readers, backbone kinds.

cytofm registers its own implementations with :meth:`Registry.register`. A name it does not know
is looked up among the entry points of installed packages, so a user adds a detector (or a
reader, or a backbone kind) from their own package without editing cytofm::

    # pyproject.toml of the user's package
    [project.entry-points."cytofm.detectors"]
    mydetector = "my_package.detect:make_detector"

and then sets ``cells.detector: mydetector``. The entry point names the factory itself; it is
loaded the first time the name is asked for.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from cytofm.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Name -> factory, filled by cytofm's modules and by entry points of ``group``.

    ``what`` names the kind of plug-in in errors, ``key`` the config key that selects one, and
    ``lazy`` lists cytofm modules that register more names when imported (imported only when a
    name is missing, so heavy optional code is not loaded by every job).
    """

    def __init__(self, what: str, group: str, key: str, lazy: tuple[str, ...] = ()):
        self.what, self.group, self.key, self.lazy = what, group, key, lazy
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
        for module in self.lazy:
            importlib.import_module(module)
            if name in self._items:
                return self._items[name]
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
        return isinstance(name, str) and self._find(name) is not None

    def names(self) -> list[str]:
        """Every name on offer: registered, lazily registered and entry points."""
        for module in self.lazy:
            importlib.import_module(module)
        return sorted(set(self._items) | set(self._entry_points()))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
