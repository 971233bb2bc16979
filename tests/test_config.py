"""Config validation: bad input fails before any job runs, with a message that names it."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import yaml

from benchmarks.config import REPO_ROOT, cell_config, cells, config_hash, load_yaml, validate
from benchmarks.errors import ConfigError
from benchmarks.evaluate import EvalConfig
from benchmarks.gaps import GapConfig
from benchmarks.train import TrainConfig, Warmup

MINIMAL = {"methods": ["avi"], "datasets": {"mnist5k": {}}}


@pytest.mark.parametrize(
    "path", [p for p in sorted((REPO_ROOT / "config").glob("*.yaml")) if p.name != "schema.yaml"],
    ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    validate(load_yaml(path))


def test_unknown_method_is_rejected():
    bad = {**MINIMAL, "methods": ["avi", "vae_magic"]}
    with pytest.raises(ConfigError, match="vae_magic"):
        validate(bad)


def test_unknown_dataset_is_rejected():
    bad = {**MINIMAL, "datasets": {"imagenet": {}}}
    with pytest.raises(ConfigError, match="imagenet"):
        validate(bad)


@pytest.mark.parametrize("epochs", [0, -3])
def test_non_positive_epochs_are_rejected(epochs):
    bad = {**MINIMAL, "train": {"epochs": epochs}}
    with pytest.raises(ConfigError, match="epochs"):
        validate(bad)
    bad = {**MINIMAL, "datasets": {"mnist5k": {"train": {"epochs": epochs}}}}
    with pytest.raises(ConfigError, match="epochs"):
        validate(bad)


@pytest.mark.parametrize(
    "patch, word",
    [
        ({"train": {"lr": -1}}, "lr"),
        ({"train": {"lrate": 0.1}}, "lrate"),
        ({"eval": {"is_samples": 0}}, "is_samples"),
        ({"method_config": {"avi": {"train_sample": 2}}}, "train_sample"),
        ({"datasets": {"mnist5k": {"data": {"n_tset": 5}}}}, "n_tset"),
        ({"datasets": {"mnist5k": {"model": {"latent": 5}}}}, "latent"),
        ({"datasets": {"mnist5k": {"model": {"family": "pixelcnn"}}}}, "pixelcnn"),
        ({"seeds": []}, "seeds"),
        ({"device": "tpu"}, "tpu"),
        ({"gaps": {"enabled": True, "local": {"lrate": 1}}}, "lrate"),
        ({"gaps": {"points": {"test": 0}}}, "test"),
    ],
)
def test_bad_values_name_the_field(patch, word):
    config = copy.deepcopy(MINIMAL)
    config.update(patch)
    with pytest.raises(ConfigError, match=word):
        validate(config)


def test_schema_lists_exactly_the_dataclass_options():
    schema = yaml.safe_load((REPO_ROOT / "config" / "schema.yaml").read_text())
    train_keys = set(schema["$defs"]["train"]["properties"])
    assert train_keys == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(schema["$defs"]["train"]["properties"]["warmup"]["properties"]) == {
        f.name for f in dataclasses.fields(Warmup)}
    assert set(schema["$defs"]["eval"]["properties"]) == {f.name for f in dataclasses.fields(EvalConfig)}
    gap_keys = set(schema["$defs"]["gaps"]["properties"]) - {"enabled", "points"}
    assert gap_keys == {f.name for f in dataclasses.fields(GapConfig)}


def test_cell_config_merges_global_dataset_and_method_sections():
    config = {
        "methods": ["avi"],
        "seeds": [0, 1],
        "train": {"epochs": 10, "lr": 0.1, "batch_size": 50},
        "method_config": {"avi": {"train_samples": 2, "train": {"lr": 0.01}}},
        "datasets": {"mnist5k": {"train": {"epochs": 3},
                                 "method_config": {"avi": {"train": {"batch_size": 7}}}}},
    }
    validate(config)
    cell = cell_config(config, "mnist5k", "avi", 1)
    assert cell["train"] == {"epochs": 3, "lr": 0.01, "batch_size": 7}
    config["datasets"]["mnist5k"]["train"]["lr"] = 0.5  # the method's own lr still wins over the dataset's
    assert cell_config(config, "mnist5k", "avi", 1)["train"]["lr"] == 0.01
    assert cell["method_config"] == {"train_samples": 2}
    assert cells(config) == [("mnist5k", "avi", 0), ("mnist5k", "avi", 1)]
    assert config_hash(cell) != config_hash(cell_config(config, "mnist5k", "avi", 0))


def test_exclude_and_per_dataset_methods():
    config = {"methods": ["avi"], "seeds": [0],
              "datasets": {"mnist5k": {}, "linear_gaussian": {"methods": []}},
              "exclude": [{"dataset": "mnist5k", "method": "avi"}]}
    validate(config)
    assert cells(config) == []
