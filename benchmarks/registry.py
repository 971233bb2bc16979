"""One registry style for methods, datasets and model families.

A registry maps a name to a class. Classes register themselves: the base class of each kind calls
``Registry.add`` for every subclass that sets ``name``. On the first lookup the registry imports every
public module of its package (names not starting with ``_``), so a new module is found without editing
any list.
"""
from __future__ import annotations

import importlib
import pkgutil

from .errors import ConfigError


class Registry:
    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self._classes: dict[str, type] = {}
        self._loaded = False

    def add(self, cls: type) -> type:
        previous = self._classes.get(cls.name)
        if previous is not None and previous.__qualname__ != cls.__qualname__:
            raise TypeError(f"{self.kind} {cls.name!r} is defined twice: {previous.__module__}.{previous.__qualname__} "
                            f"and {cls.__module__}.{cls.__qualname__}")
        self._classes[cls.name] = cls
        return cls

    def _load(self) -> None:
        if self._loaded:
            return
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")
        self._loaded = True

    def names(self) -> list[str]:
        self._load()
        return sorted(self._classes)

    def get(self, name: str) -> type:
        self._load()
        if name not in self._classes:
            raise ConfigError(f"unknown {self.kind} {name!r}; available {self.kind}s: {self.names()}")
        return self._classes[name]

    def classes(self) -> list[type]:
        return [self._classes[n] for n in self.names()]
