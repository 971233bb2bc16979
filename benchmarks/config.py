"""Suite configuration: schema validation, per-cell resolution, typed option dataclasses.

A *cell* is one (dataset, method, seed) job. Its effective configuration is the global sections merged
with the dataset's overrides and the method's overrides (later wins):

    train  = config.train  <- datasets[d].train <- config.method_config[m].train <- datasets[d].method_config[m].train
    eval   = config.eval   <- datasets[d].eval        (gaps likewise)
    method = config.method_config[m] <- datasets[d].method_config[m]      (the `train` key removed)

Defaults live in one place: the option dataclasses (TrainConfig, EvalConfig, each method's Config,
each dataset's and model family's options). The schema checks structure and ranges; unknown method and
dataset names are rejected against the registries, before any job runs.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "config" / "schema.yaml"


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


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML value to the field's annotated type, with an error naming the field."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: value {value!r} does not match {annotation}")
    if typing.get_origin(annotation) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)  # YAML reads 1e-3 (no dot) as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type, data: dict | None, where: str) -> Any:
    """Build option dataclass `cls` from a config mapping; unknown keys are an error naming them."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown option(s) {unknown}; known options are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return obj


def to_dict(obj: Any) -> dict:
    """A dataclass as a plain JSON-friendly dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def validate(config: dict) -> dict:
    """Validate a suite config against config/schema.yaml and the method/dataset registries.

    Every cell is resolved too, so a misspelled option of a method, model, dataset, train or eval
    section fails here, naming it, before any job runs. Returns the config unchanged.
    """
    import jsonschema

    from methods import available_methods

    from .datasets import available_datasets

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    schema["properties"]["methods"]["items"]["enum"] = available_methods()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            location = "/".join(str(p) for p in err.absolute_path) or "<top level>"
            lines.append(f"  {location}: {err.message}")
        raise ConfigError("config does not match config/schema.yaml:\n" + "\n".join(lines))
    for name in config["datasets"]:
        kind = dataset_kind(config, name)
        if kind not in available_datasets():
            raise ConfigError(
                f"datasets.{name}: unknown dataset {kind!r}; available datasets: {available_datasets()} "
                "(a dataset entry's key names a registered dataset, or it sets `dataset:` to one)"
            )
    for dataset, method, seed in cells(config):
        resolve_cell(config, dataset, method, seed)
    return config


def cells(config: dict) -> list[tuple[str, str, int]]:
    """All (dataset, method, seed) jobs of a suite config, minus `exclude` entries."""
    excluded = {(e["dataset"], e["method"]) for e in config.get("exclude", [])}
    out = []
    for dataset, ds_cfg in config["datasets"].items():
        methods = (ds_cfg or {}).get("methods", config["methods"])
        for method in methods:
            if (dataset, method) in excluded:
                continue
            out.extend((dataset, method, seed) for seed in config.get("seeds", [0]))
    return out


def dataset_kind(config: dict, name: str) -> str:
    """The registered dataset behind a config entry: its `dataset:` field, else the entry's key.

    Entries are instances, so one registered dataset can appear twice with different options
    (e.g. the synthetic oracle with its generator fixed and learned)."""
    return (config["datasets"][name] or {}).get("dataset", name)


def cell_config(config: dict, dataset: str, method: str, seed: int) -> dict:
    """The effective, self-contained configuration of one cell (a plain dict, JSON-serializable)."""
    ds = config["datasets"][dataset] or {}
    method_global = dict((config.get("method_config") or {}).get(method) or {})
    method_local = dict((ds.get("method_config") or {}).get(method) or {})
    # a method's own train options are deliberate exceptions: they beat the dataset's general ones
    train = deep_merge(config.get("train") or {}, ds.get("train"))
    train = deep_merge(train, method_global.pop("train", None))
    train = deep_merge(train, method_local.pop("train", None))
    return {
        "dataset": dataset,
        "dataset_kind": dataset_kind(config, dataset),
        "method": method,
        "seed": int(seed),
        "device": config.get("device", "auto"),
        "deterministic": bool(config.get("deterministic", True)),
        "data": data_options(config, dataset),
        "model": dict(ds.get("model") or {}),
        "train": train,
        "eval": deep_merge(config.get("eval") or {}, ds.get("eval")),
        "gaps": deep_merge(config.get("gaps") or {}, ds.get("gaps")),
        "method_config": deep_merge(method_global, method_local),
    }


STAGE_SECTIONS = ("eval", "gaps")


def training_cell(cell: dict) -> dict:
    """The part of a cell that determines the trained model (its hash names the checkpoint); the
    evaluation and gap options are passed to their own stages, so changing them retrains nothing."""
    return {k: v for k, v in cell.items() if k not in STAGE_SECTIONS}


def gaps_enabled(config: dict, dataset: str, method: str, seed: int) -> bool:
    """Whether the cell runs the inference-gap analysis (`gaps: {enabled: true}`)."""
    return bool(cell_config(config, dataset, method, seed)["gaps"].get("enabled", False))


def data_options(config: dict, dataset: str) -> dict:
    """Options of the dataset's builder (its `data:` section) plus the suite's data directory."""
    ds = config["datasets"][dataset] or {}
    return dict(ds.get("data") or {})


def resolve_cell(config: dict, dataset: str, method: str, seed: int) -> dict:
    """Resolve and type-check one cell's options; returns the cell config dict."""
    from methods import method_class

    from .datasets import dataset_class
    from .evaluate import EvalConfig
    from .gaps import GapConfig
    from .models import family_options
    from .train import TrainConfig

    cell = cell_config(config, dataset, method, seed)
    where = f"datasets.{dataset}"
    dataset_cls = dataset_class(cell["dataset_kind"])
    from_dict(dataset_cls, cell["data"], f"{where}.data")
    family_options(dataset_cls, cell["model"], f"{where}.model")
    from_dict(TrainConfig, cell["train"], f"train (cell {dataset}/{method})")
    from_dict(EvalConfig, cell["eval"], f"eval (cell {dataset}/{method})")
    gaps = {k: v for k, v in cell["gaps"].items() if k not in ("enabled", "points")}
    from_dict(GapConfig, gaps, f"gaps (cell {dataset}/{method})")
    from_dict(method_class(method).Config, cell["method_config"], f"method_config.{method}")
    return cell
