"""Registry of inference methods: one module per method, found without editing any list.

Every module in this package (except ``base`` and private helpers named ``_*``) defines one
``InferenceMethod`` subclass whose ``name`` equals the module's name; defining it registers it.
``method_class(name)`` imports on demand.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

_REGISTRY: dict[str, type] = {}
_PACKAGE_DIR = Path(__file__).resolve().parent
_NOT_METHODS = {"base"}


def register(cls: type) -> type:
    module_name = cls.__module__.rsplit(".", 1)[-1]
    if cls.name != module_name:
        raise TypeError(
            f"method class {cls.__qualname__} is named {cls.name!r} but lives in methods/{module_name}.py;"
            " the registry name must equal the module name"
        )
    if not hasattr(cls, "Config"):
        raise TypeError(f"method {cls.name!r} must declare a Config dataclass")
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    """Names of all method modules (no import needed)."""
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(_PACKAGE_DIR)])
        if m.name not in _NOT_METHODS and not m.name.startswith("_")
    )


def method_class(name: str) -> type:
    """The InferenceMethod subclass registered under `name`."""
    from benchmarks.errors import ConfigError

    if name not in available_methods():
        raise ConfigError(f"unknown method {name!r}; available methods: {available_methods()}")
    if name not in _REGISTRY:
        importlib.import_module(f"{__name__}.{name}")
    if name not in _REGISTRY:
        raise ConfigError(f"methods/{name}.py defines no InferenceMethod subclass named {name!r}")
    return _REGISTRY[name]


def build_method(name: str, model, options: dict | None = None):
    """Instantiate method `name` on the generative `model` with config `options` (dict)."""
    from benchmarks.config import from_dict

    cls = method_class(name)
    return cls(model, from_dict(cls.Config, options or {}, f"method_config.{name}"))


__all__ = ["available_methods", "build_method", "method_class", "register"]
