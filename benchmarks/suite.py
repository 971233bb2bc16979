"""The suite: validation of a whole config and per-cell resolution.

A *cell* is one (dataset entry, method, seed) job. Its effective configuration is the global sections
merged with the dataset entry's and the method's (later wins):

    train  = train <- datasets[d].train <- method_config[m].train <- datasets[d].method_config[m].train
    eval   = eval  <- datasets[d].eval           (gaps likewise)
    method = method_config[m] <- datasets[d].method_config[m]     (the `train` key removed)

    timing, report, resume = the global section <- the dataset entry's (one per dataset: no method overrides)

Every section is checked by its own ``Options`` class at every level it appears, so an error names the
level and the key. A resolved cell has every option filled in (defaults included) and the hashes that
name its results: ``train`` (what determines the trained model), ``eval``, ``gaps`` and ``timing`` (the
train hash plus that stage's options). A changed default therefore changes the hash, and nothing trained
under the old default is reused. ``resume`` (overrides applied only when a checkpoint is resumed) is not
hashed. The dataset's budget policy is its train section before method overrides: a cell whose budget
differs is marked in every leaderboard.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from methods import available_methods, method_class

from . import models
from .datasets import dataset_class
from .errors import ConfigError
from .evaluate import EvalConfig
from .gaps import GapConfig
from .options import Options, config_hash, deep_merge
from .report import ReportConfig
from .report.published import published_rows
from .scale import smoke_cell, smoke_data
from .timing import TimingConfig
from .train import TRAINING_KEYS, ResumeOverride, TrainConfig

RULES = ("prepare_data", "train", "evaluate", "timing", "gaps", "report")
#: what each stage reads of a cell besides the training part (its view: cell/<stage>.json)
STAGE_SECTIONS = {"train": ("resume",), "eval": ("eval",), "gaps": ("gaps",), "timing": ("timing",)}
STAGES = tuple(STAGE_SECTIONS)


class Exclusion(Options):
    dataset: str
    method: str


class DatasetEntry(Options):
    """One entry of `datasets:`; its key names a registered dataset unless `dataset:` does."""

    dataset: Optional[str] = None
    data: dict[str, Any] = {}
    model: dict[str, Any] = {}
    methods: Optional[list[str]] = None
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    gaps: GapConfig = GapConfig()
    timing: TimingConfig = TimingConfig()
    report: ReportConfig = ReportConfig()
    resume: ResumeOverride = ResumeOverride()
    method_config: dict[str, Optional[dict[str, Any]]] = {}


class SuiteConfig(Options):
    """The whole suite config (config/default.yaml and friends)."""

    scale: Literal["full", "smoke"] = "full"  # smoke: every size cut down (benchmarks/scale.py)
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
    deterministic: bool = True  # torch deterministic algorithms (same seed, same numbers)
    threads: int = Field(1, ge=1)  # torch threads per training / evaluation job
    seeds: list[int] = Field([0], min_length=1)
    methods: list[str] = Field(min_length=1)
    datasets: dict[str, Optional[DatasetEntry]] = Field(min_length=1)
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    gaps: GapConfig = GapConfig()
    timing: TimingConfig = TimingConfig()
    report: ReportConfig = ReportConfig()
    resume: ResumeOverride = ResumeOverride()  # applied only when a checkpoint is resumed; not hashed
    method_config: dict[str, Optional[dict[str, Any]]] = {}
    resources: dict[str, dict[str, int | float | str]] = {}
    exclude: list[Exclusion] = []

    @field_validator("seeds", "methods")
    @classmethod
    def _unique(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"entries must be unique, got {values}")
        if any(isinstance(v, int) and v < 0 for v in values):
            raise ValueError(f"seeds must be >= 0, got {values}")
        return values

    @field_validator("resources")
    @classmethod
    def _known_rules(cls, resources: dict) -> dict:
        unknown = sorted(set(resources) - set(RULES))
        if unknown:
            raise ValueError(f"unknown rule(s) {unknown}; rules are {list(RULES)}")
        return resources


def parse_suite(config: dict, where: str = "config") -> SuiteConfig:
    """The typed suite config; every key is checked, as are the method and dataset names."""
    suite = SuiteConfig.parse(config, where)
    methods = available_methods()
    for name in suite.methods:
        if name not in methods:
            raise ConfigError(f"{where}: methods: unknown method {name!r}; available methods: {methods}")
    _check_method_names(suite.method_config, f"{where}: method_config", methods)
    for key, entry in suite.datasets.items():
        entry = entry or DatasetEntry()
        kind = entry.dataset or key
        dataset_class(kind)  # an unknown dataset is a ConfigError naming the known ones
        for name in entry.methods or []:
            if name not in methods:
                raise ConfigError(f"{where}: datasets.{key}.methods: unknown method {name!r}; available: {methods}")
        _check_method_names(entry.method_config, f"{where}: datasets.{key}.method_config", methods)
    for key, entry in suite.datasets.items():
        reference = (entry.report.published if entry and "published" in entry.report.model_fields_set else None) \
            or suite.report.published
        if reference is not None:
            try:
                published_rows(reference)
            except ValueError as exc:
                raise ConfigError(f"{where}: datasets.{key}.report.published: {exc}") from None
    for item in suite.exclude:
        if item.dataset not in suite.datasets:
            raise ConfigError(f"{where}: exclude: no dataset entry {item.dataset!r}; entries: {sorted(suite.datasets)}")
        if item.method not in methods:
            raise ConfigError(f"{where}: exclude: unknown method {item.method!r}; available methods: {methods}")
    return suite


def _check_method_names(section: dict, where: str, methods: list[str]) -> None:
    for name in section:
        if name not in methods:
            raise ConfigError(f"{where}.{name}: unknown method {name!r}; available methods: {methods}")


def validate(config: dict, where: str = "config") -> dict:
    """Check a suite config and resolve every cell (so any bad option fails here, naming it, before any
    job runs). Returns the config unchanged."""
    suite = parse_suite(config, where)
    for dataset, method, seed in cells(config):
        resolve_cell(config, dataset, method, seed, suite)
    return config


def cells(config: dict) -> list[tuple[str, str, int]]:
    """All (dataset, method, seed) jobs of a suite config, minus `exclude` entries."""
    excluded = {(e["dataset"], e["method"]) for e in config.get("exclude") or []}
    out = []
    for dataset, entry in config["datasets"].items():
        methods = (entry or {}).get("methods")
        for method in config["methods"] if methods is None else methods:
            if (dataset, method) not in excluded:
                out.extend((dataset, method, int(seed)) for seed in config.get("seeds") or [0])
    return out


def dataset_kind(config: dict, name: str) -> str:
    """The registered dataset behind a config entry: its `dataset:` field, else the entry's key.

    Entries are instances, so one registered dataset can appear twice with different options
    (e.g. the synthetic oracle with its generator fixed and learned)."""
    return (config["datasets"][name] or {}).get("dataset") or name


def data_options(config: dict, dataset: str) -> dict:
    """The resolved `data:` options of a dataset entry (defaults filled in; cut down at `scale: smoke`)."""
    kind = dataset_kind(config, dataset)
    entry = config["datasets"][dataset] or {}
    options = dataset_class(kind).parse(entry.get("data"), f"datasets.{dataset}.data").to_dict()
    return smoke_data(options) if config.get("scale") == "smoke" else options


def _section(config: dict, dataset: str, name: str, cls: type[Options]) -> dict:
    """The global section merged with the dataset's, each level checked by `cls` (explicit keys only)."""
    entry = config["datasets"][dataset] or {}
    top = cls.parse(config.get(name), name).explicit()
    local = cls.parse(entry.get(name), f"datasets.{dataset}.{name}").explicit()
    return deep_merge(top, local)


def resolve_cell(config: dict, dataset: str, method: str, seed: int, suite: SuiteConfig | None = None) -> dict:
    """The resolved, self-contained configuration of one cell (a JSON-ready dict) with its hashes."""
    if suite is None:
        suite = parse_suite(config)
    entry = config["datasets"][dataset] or {}
    kind = dataset_kind(config, dataset)
    dataset_cls = dataset_class(kind)
    method_global = dict((config.get("method_config") or {}).get(method) or {})
    method_local = dict((entry.get("method_config") or {}).get(method) or {})
    where_global, where_local = f"method_config.{method}", f"datasets.{dataset}.method_config.{method}"
    # a method's own train options are deliberate exceptions: they beat the dataset's general ones
    train = _section(config, dataset, "train", TrainConfig)
    for options, where in ((method_global.pop("train", None), where_global), (method_local.pop("train", None), where_local)):
        train = deep_merge(train, TrainConfig.parse(options, f"{where}.train").explicit())
    method_cls = method_class(method)
    method_cls.Config.parse(method_global, where_global)
    method_cls.Config.parse(method_local, where_local)
    policy = TrainConfig.parse(_section(config, dataset, "train", TrainConfig), f"train (dataset {dataset})")
    cell = {
        "dataset": dataset,
        "dataset_kind": kind,
        "method": method,
        "seed": int(seed),
        "device": suite.device,
        "deterministic": suite.deterministic,
        "data": data_options(config, dataset),
        "model": models.resolve_options(dataset_cls.modality, dataset_cls.likelihood, entry.get("model"),
                                        f"datasets.{dataset}.model"),
        "method_config": method_cls.Config.parse(deep_merge(method_global, method_local), where_local).to_dict(),
        "train": TrainConfig.parse(train, f"train (cell {dataset}/{method})").to_dict(),
        "eval": _resolved(config, dataset, "eval", EvalConfig),
        "gaps": _resolved(config, dataset, "gaps", GapConfig),
        "timing": _resolved(config, dataset, "timing", TimingConfig),
        "report": _resolved(config, dataset, "report", ReportConfig),
        "resume": _resolved(config, dataset, "resume", ResumeOverride),
        "budget_policy": {"epochs": policy.epochs, **policy.budget.to_dict()},
    }
    if suite.scale == "smoke":
        cell = smoke_cell(cell)
    train_hash = config_hash({k: cell[k] for k in TRAINING_KEYS})
    cell["hashes"] = {
        "data": config_hash({"dataset": kind, "options": cell["data"]}),
        # the configuration without the seed: cells with equal ones are seeds of one experiment
        "config": config_hash({**{k: cell[k] for k in TRAINING_KEYS if k != "seed"}, "eval": cell["eval"]}),
        "train": train_hash,
        **{stage: config_hash({"train": train_hash, stage: cell[stage]}) for stage in ("eval", "gaps", "timing")},
    }
    return cell


def _resolved(config: dict, dataset: str, name: str, cls: type[Options]) -> dict:
    return cls.parse(_section(config, dataset, name, cls), f"{name} (dataset {dataset})").to_dict()


def stage_view(cell: dict, stage: str) -> dict:
    """The cell as `stage` reads it: the training part plus that stage's sections and hashes only, so a
    changed option rewrites (and reruns) only the stages that depend on it."""
    view = {k: cell[k] for k in (*TRAINING_KEYS, *STAGE_SECTIONS[stage])}
    view["hashes"] = {k: v for k, v in cell["hashes"].items() if k in ("data", "train", stage)}
    return view


def expected_cells(config: dict, resolved: dict) -> list[dict]:
    """What the report checks results against: each cell's identity, hashes, budget and report options."""
    keys = ("dataset", "dataset_kind", "method", "seed", "hashes", "budget_policy", "report")
    return [{**{k: cell[k] for k in keys},
             "budget": {"epochs": cell["train"]["epochs"], **cell["train"]["budget"]},
             "gaps_enabled": cell["gaps"]["enabled"]}
            for cell in (resolved[c] for c in cells(config))]
