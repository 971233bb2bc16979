"""Typed options: the base class of every config section, YAML loading, merging and hashing.

Every option of the suite is declared once, as a field of an ``Options`` subclass (pydantic): its type,
default and range. ``Options.parse(mapping, where)`` turns a config mapping into the typed object and
reports any problem as a ``ConfigError`` that names the key (``where`` + the path inside the section):
an unknown key lists the known ones. Numbers written as ``1e-3`` (which YAML 1.1 reads as a string)
parse as numbers; ``true``/``false`` are not numbers, and numbers are not booleans.

This module imports nothing of the suite above ``errors``: it is the bottom layer.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import ConfigError

T = TypeVar("T", bound="Options")


class Options(BaseModel):
    """Base of every option section: unknown keys are errors, values are checked against the field types."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _no_surprising_coercion(cls, data: Any) -> Any:
        """Refuse true/false where a number belongs and anything but true/false where a boolean belongs
        (pydantic's lax mode would take them as 1/0 and 'yes')."""
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is None or value is None:
                continue
            kinds = _scalar_kinds(field.annotation)
            if isinstance(value, bool) and kinds and bool not in kinds:
                raise ValueError(f"{name}: expected a number, got {value!r}")
            if kinds == {bool} and not isinstance(value, bool):
                raise ValueError(f"{name}: expected true or false, got {value!r}")
        return data

    @classmethod
    def parse(cls: type[T], data: Any, where: str) -> T:
        """The typed section for a config mapping (None = all defaults); errors name `where`.key."""
        if data is None:
            data = {}
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of options, got {data!r}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc, cls, where)) from None

    def to_dict(self) -> dict:
        """Every option (defaults included) as plain JSON values (tuples become lists)."""
        return self.model_dump(mode="json")

    def explicit(self) -> dict:
        """Only the options that were given (for merging partial sections level by level)."""
        return self.model_dump(mode="json", exclude_unset=True)


def _scalar_kinds(annotation: Any) -> set[type]:
    """{int, float, bool} ∩ the types an annotation admits (Optional and unions unpacked)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_scalar_kinds(a) for a in typing.get_args(annotation)))
    if origin is typing.Annotated:
        return _scalar_kinds(typing.get_args(annotation)[0])
    return {annotation} & {int, float, bool}


def known_options(cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model that `loc` points into, for 'unknown option' messages."""
    model: Any = cls
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) and hasattr(model, "model_fields") else None
        if field is None:
            break
        nested = [a for a in (field.annotation, *typing.get_args(field.annotation))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            break
        model = nested[0]
    return sorted(getattr(model, "model_fields", {}))


def describe_errors(exc: ValidationError, cls: type[BaseModel], where: str) -> str:
    """One line per problem: `where.key: what is wrong (got value)`."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = ".".join([where, *map(str, loc)]) if loc else where
        if err["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown option; known options are {known_options(cls, loc)}")
            continue
        if err["type"] == "missing":
            lines.append(f"{path}: required, but not given")
            continue
        message = err["msg"].removeprefix("Value error, ")
        shown = "" if err["type"] == "value_error" else f" (got {_short(err.get('input'))})"
        lines.append(f"{path}: {message}{shown}")
    return "; ".join(lines) if len(lines) == 1 else "\n  " + "\n  ".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------
# merging and hashing


def deep_merge(base: dict, override: dict | None) -> dict:
    """Return a new dict: `override` merged into `base`, recursing into nested dicts."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-serializable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3 and 1E+5 as floats (YAML 1.1 needs a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> dict:
    """A YAML mapping from `path`; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data
