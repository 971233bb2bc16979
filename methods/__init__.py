"""Registry of inference methods: one module per method, found without editing any list.

Every public module of this package (``base`` aside; private helpers are named ``_*``) defines one
``InferenceMethod`` subclass whose ``name`` equals the module's name; defining it registers it in
``METHODS`` (benchmarks.registry: the same style as datasets and model families).
"""
from __future__ import annotations

from .base import METHODS, InferenceMethod


def available_methods() -> list[str]:
    """Names of all registered methods."""
    return METHODS.names()


def method_class(name: str) -> type[InferenceMethod]:
    """The InferenceMethod subclass registered under `name` (ConfigError listing the others if none)."""
    return METHODS.get(name)


def build_method(name: str, model, options: dict | None = None) -> InferenceMethod:
    """Instantiate method `name` on the generative `model` with its `method_config` options (a mapping)."""
    cls = method_class(name)
    return cls(model, cls.Config.parse(options, f"method_config.{name}"))


__all__ = ["METHODS", "available_methods", "build_method", "method_class"]
