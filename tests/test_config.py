"""Config validation: bad input fails before any job runs, with a message that names it."""
from __future__ import annotations

import copy

import pytest

from benchmarks.errors import ConfigError
from benchmarks.options import config_hash, load_yaml
from benchmarks.provenance import REPO_ROOT
from benchmarks.suite import cells, resolve_cell, stage_view, validate

MINIMAL = {"methods": ["avi"], "datasets": {"mnist5k": {}}}


@pytest.mark.parametrize(
    "path", sorted((REPO_ROOT / "config").glob("**/*.yaml")), ids=lambda p: str(p.relative_to(REPO_ROOT)))
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
    with pytest.raises(ConfigError, match=r"datasets\.mnist5k\.train\.epochs"):
        validate(bad)


@pytest.mark.parametrize(
    "patch, word",
    [
        ({"train": {"lr": -1}}, "lr"),
        ({"train": {"lrate": 0.1}}, "lrate"),
        ({"train": {"warmup": {"knd": "kl"}}}, r"train\.warmup\.knd.*known options are \['epochs', 'kind', 'start'\]"),
        ({"eval": {"is_samples": 0}}, "is_samples"),
        ({"method_config": {"avi": {"train_sample": 2}}}, "train_sample"),
        ({"method_config": {"avi": {"train": {"epoch": 2}}}}, r"method_config\.avi\.train\.epoch"),
        ({"datasets": {"mnist5k": {"data": {"n_tset": 5}}}}, "n_tset"),
        ({"datasets": {"mnist5k": {"model": {"latent": 5}}}}, "latent"),
        ({"datasets": {"mnist5k": {"model": {"family": "pixelcnn"}}}}, "pixelcnn"),
        ({"datasets": {"mnist5k": {"model": {"family": "lstm_categorical"}}}}, "does not fit"),
        ({"datasets": {"mnist5k": {"colour": "red"}}}, "colour"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [0, 0]}, "unique"),
        ({"device": "tpu"}, "device"),
        ({"gaps": {"enabled": True, "local": {"lrate": 1}}}, "lrate"),
        ({"gaps": {"points": {"test": 0}}}, "test"),
        ({"gaps": {"points": {"tset": 10}}}, "tset"),
        ({"resources": {"trian": {"mem_mb": 1}}}, "trian"),
        # a misspelled method name is an error wherever it appears (it used to be ignored)
        ({"method_config": {"savea": {"steps": 50}}}, r"method_config\.savea.*unknown method"),
        ({"datasets": {"mnist5k": {"method_config": {"savea": {"steps": 50}}}}}, r"datasets\.mnist5k\.method_config\.savea"),
        ({"datasets": {"mnist5k": {"methods": ["avi", "sv"]}}}, "'sv'"),
        ({"exclude": [{"dataset": "mnist5k", "method": "savea"}]}, r"exclude.*savea"),
        ({"exclude": [{"dataset": "mnist", "method": "avi"}]}, r"exclude.*'mnist'"),
        # true/false is not a number, and a number is not a boolean
        ({"train": {"epochs": True}}, "epochs: expected a number"),
        ({"deterministic": 1}, "deterministic: expected true or false"),
    ],
)
def test_bad_values_name_the_field(patch, word):
    config = copy.deepcopy(MINIMAL)
    config.update(patch)
    with pytest.raises(ConfigError, match=word):
        validate(config)


def test_numbers_written_like_1e_3_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-3 (no dot) as a string; the config loader and the option parser take it as 0.001,
    whether the YAML was read by amortbench or by Snakemake (which passes the string on)."""
    path = tmp_path / "c.yaml"
    path.write_text("methods: [avi]\ndatasets: {mnist5k: {}}\ntrain: {lr: 1e-3, epochs: 2}\n")
    config = load_yaml(path)
    assert config["train"]["lr"] == pytest.approx(1e-3)
    as_string = {**MINIMAL, "train": {"lr": "1e-3"}}
    assert resolve_cell(validate(as_string), "mnist5k", "avi", 0)["train"]["lr"] == pytest.approx(1e-3)


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("methods: [avi]\ndatasets:\n  mnist5k: {model: {latent_dim: 4}\n  other: 1\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml, line \d+, column \d+"):
        load_yaml(path)


def test_cell_merges_global_dataset_and_method_sections():
    config = {
        "methods": ["avi"],
        "seeds": [0, 1],
        "train": {"epochs": 10, "lr": 0.1, "batch_size": 50},
        "method_config": {"avi": {"train_samples": 2, "train": {"lr": 0.01}}},
        "datasets": {"mnist5k": {"train": {"epochs": 3},
                                 "method_config": {"avi": {"train": {"batch_size": 7}}}}},
    }
    validate(config)
    cell = resolve_cell(config, "mnist5k", "avi", 1)
    assert {k: cell["train"][k] for k in ("epochs", "lr", "batch_size")} == {"epochs": 3, "lr": 0.01, "batch_size": 7}
    assert cell["train"]["optimizer"] == "adam"  # defaults are filled in (and hashed)
    config["datasets"]["mnist5k"]["train"]["lr"] = 0.5  # the method's own lr still wins over the dataset's
    assert resolve_cell(config, "mnist5k", "avi", 1)["train"]["lr"] == 0.01
    assert cell["method_config"]["train_samples"] == 2 and cell["model"]["family"] == "bernoulli_mlp"
    assert cells(config) == [("mnist5k", "avi", 0), ("mnist5k", "avi", 1)]
    assert cell["hashes"]["train"] != resolve_cell(config, "mnist5k", "avi", 0)["hashes"]["train"]


def test_hashes_separate_what_each_stage_depends_on():
    base = resolve_cell(validate(copy.deepcopy(MINIMAL)), "mnist5k", "avi", 0)
    evaluated = resolve_cell(validate({**MINIMAL, "eval": {"is_samples": 7}}), "mnist5k", "avi", 0)
    trained = resolve_cell(validate({**MINIMAL, "train": {"epochs": 7}}), "mnist5k", "avi", 0)
    assert base["hashes"]["train"] == evaluated["hashes"]["train"] != trained["hashes"]["train"]
    assert base["hashes"]["eval"] != evaluated["hashes"]["eval"]
    assert base["hashes"]["gaps"] == evaluated["hashes"]["gaps"] != trained["hashes"]["gaps"]
    # what the train stage reads does not change with eval options, so they retrain nothing
    assert stage_view(base, "train") == stage_view(evaluated, "train")
    assert config_hash(stage_view(base, "eval")) != config_hash(stage_view(evaluated, "eval"))


def test_exclude_and_per_dataset_methods():
    config = {"methods": ["avi"], "seeds": [0],
              "datasets": {"mnist5k": {}, "linear_gaussian": {"methods": []}},
              "exclude": [{"dataset": "mnist5k", "method": "avi"}]}
    validate(config)
    assert cells(config) == []


def test_smoke_scale_cuts_every_size_and_keeps_the_rest():
    full = load_yaml(REPO_ROOT / "config" / "default.yaml")
    assert validate(copy.deepcopy(full)) == full  # scale: full (the default) changes nothing
    smoke = validate({**copy.deepcopy(full), "scale": "smoke"})
    cell = resolve_cell(smoke, "mnist5k", "iaf", 0)
    assert cell["train"]["epochs"] == 1 and cell["eval"]["is_samples"] == 10 and cell["timing"]["rounds"] == 1
    assert cell["model"]["hidden"] == [32, 32] and cell["model"]["latent_dim"] == 16  # widths cut, z kept
    assert cell["method_config"]["made_hidden"] == [16, 16] and cell["method_config"]["context_dim"] == 8
    assert cell["gaps"]["points"] == {"test": 4} and cell["gaps"]["local"]["max_steps"] == 20
    oracle = resolve_cell(smoke, "synthetic_oracle", "avi", 0)
    assert oracle["data"]["n_train"] == 200 and oracle["data"]["hidden"] == oracle["model"]["hidden"] == 32
    assert oracle["method_config"] == resolve_cell(full, "synthetic_oracle", "avi", 0)["method_config"]
    lg = resolve_cell(smoke, "linear_gaussian", "svi", 0)
    assert lg["method_config"]["steps"] == 50 and lg["method_config"]["lr"] == 0.02  # method settings kept


def test_a_published_table_must_exist():
    config = {**MINIMAL, "report": {"published": {"paper": "kim2018_savae", "table": "9"}}}
    with pytest.raises(ConfigError, match=r"no published rows .*kim2018_savae"):
        validate(config)
    config["report"]["published"].update(table="1", setting="oracle_generator", methods={"vae": "avi"})
    with pytest.raises(ConfigError, match=r"published methods \['savae', 'svi', 'true_model'\]"):
        validate(config)
