"""No stale or foreign result survives, and no shared file runs code: each way a probe of the pipeline once
got a wrong or unsafe result without a word, kept as a test so that none can come back."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks.datasets import DataSplits, LinearGaussianData
from benchmarks.datasets.core import checksum_path, sha256_of
from benchmarks.errors import DataError
from benchmarks.io import write_text
from benchmarks.provenance import REPO_ROOT
from benchmarks.runtime import load_checkpoint, load_model, save_model
from tests.integration.test_pipeline import snakemake

MARKER = "amortbench-pwned"


class Payload:
    """Unpickling this calls os.system: a model file or checkpoint received from someone else could."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted(path: Path, marker: Path, with_checksum: bool = True) -> None:
    torch.save({"format": "amortbench.model/2", "meta": "{}", "state": Payload(marker)}, path)
    if with_checksum:
        write_text(checksum_path(path), sha256_of(path) + "\n")


# ----------------------------------------------------------------------------------------- unit level

def test_a_crafted_model_file_is_refused_without_running_it(tmp_path):
    marker = tmp_path / MARKER
    crafted(tmp_path / "model.pt", marker)
    with pytest.raises(DataError, match="cannot be read safely"):
        load_model(tmp_path / "model.pt", "any")
    assert not marker.exists()
    # the plain torch.load the suite used to call would have run it: the test is not vacuous
    torch.load(tmp_path / "model.pt", weights_only=False)
    assert marker.exists()


def test_a_crafted_checkpoint_is_refused_and_training_starts_over(tmp_path, caplog):
    marker = tmp_path / MARKER
    torch.save({"format": "amortbench.checkpoint/2", "train_hash": "h", "rng": Payload(marker)}, tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt", "h") is None
    assert not marker.exists() and "cannot be read safely" in caplog.text


def test_a_foreign_torch_file_with_a_valid_checksum_gets_a_clear_error(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    write_text(checksum_path(path), sha256_of(path) + "\n")
    with pytest.raises(DataError, match=r"not an amortbench model file .*rerun the pipeline to retrain"):
        load_model(path, "h")
    save_model(path, {"w": torch.zeros(2)}, {"train_hash": "other"})
    with pytest.raises(DataError, match="trained from another configuration"):
        load_model(path, "h")
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="does not match its checksum"):
        load_model(path, "other")


def test_a_model_file_without_checksum_says_how_to_regenerate_it(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"cell": {}, "state": {}}, path)  # the format of earlier amortbench versions
    with pytest.raises(DataError, match=r"no checksum file .* older version.*retrain it"):
        load_model(path, "h")


def test_prepared_data_from_other_options_is_refused(tmp_path):
    made = LinearGaussianData(n_train=300, seed=7)
    data = made.build(tmp_path)
    data.save(tmp_path / "lg.pt", made.provenance())
    wanted = LinearGaussianData(n_train=200, seed=7).provenance()
    with pytest.raises(DataError, match=r"made by dataset 'linear_gaussian'.*'n_train': 300.*asks for.*'n_train': 200"):
        DataSplits.load(tmp_path / "lg.pt", expect=wanted)
    assert DataSplits.load(tmp_path / "lg.pt", expect=made.provenance()).train.shape[0] == 300


def test_an_interrupted_report_changes_nothing_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    from benchmarks.report import build, plots
    from tests.test_report import write_cell

    cells = [write_cell(tmp_path / "runs", "avi", 0, torch.randn(20).double().numpy() - 100)]
    out = tmp_path / "results"
    build.build_report({"cells": cells}, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "training_curves", killed)
    with pytest.raises(KeyboardInterrupt):
        build.build_report({"cells": cells}, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(out.glob("**/*.tmp")) and not list(out.glob(".report-*"))


def test_a_yaml_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("methods: [avi]\ndatasets:\n  mnist5k: {model: {latent_dim: 4}\n")
    done = subprocess.run([sys.executable, "-m", "benchmarks.cli", "validate", str(path)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 2 and f"{path}, line 4, column 1" in done.stderr


# ------------------------------------------------------------------------------------- the pipeline

LG = {"device": "cpu", "methods": ["avi"],
      "datasets": {"linear_gaussian": {"data": {"n_train": 300, "n_valid": 50, "n_test": 50, "seed": 7},
                                       "train": {"epochs": 8}}},
      "eval": {"is_samples": 20}, "timing": {"rounds": 2, "repeats": 1, "warmup": 0}}
DIVERGING = {**LG, "datasets": {"linear_gaussian": {**LG["datasets"]["linear_gaussian"],
                                                    "train": {"epochs": 10, "optimizer": "sgd", "lr": 0.1,
                                                              "momentum": 0.9}}}}
RUN = Path("results/linear_gaussian/avi/seed0")


@pytest.mark.integration
def test_a_failed_rerun_never_republishes_old_numbers_as_ok(tmp_path):
    assert snakemake(tmp_path, LG).returncode == 0
    assert pd.read_csv(tmp_path / "results/leaderboard.csv").set_index("method").loc["avi", "status"] == "ok"
    failed = snakemake(tmp_path, DIVERGING)
    assert failed.returncode != 0
    log = (tmp_path / RUN / "train.log").read_text()
    assert "diverged" in log or "NaN" in log
    board = pd.read_csv(tmp_path / "results/leaderboard.csv").set_index("method")
    assert board.loc["avi", "status"] in ("stale", "missing") and pd.isna(board.loc["avi", "test_nll_mean"])
    assert ">stale<" in (tmp_path / "results/index.html").read_text() or "stale" in \
        (tmp_path / "results/leaderboard.md").read_text()
    # the advice works: a resume override keeps the cell's identity, so the rerun resumes from the last
    # good epoch and finishes; the row says how it was trained
    resumed = {**DIVERGING, "resume": {"lr": 1.0e-2}}
    done = snakemake(tmp_path, resumed)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / RUN / "train.log").read_text()
    assert "resumed from" in log and "resume override" in log
    row = pd.read_csv(tmp_path / "results/leaderboard.csv").set_index("method").loc["avi"]
    assert row["status"] == "ok" and row["budget_deviates"] and "resumed after epoch" in row["budget_note"]


@pytest.mark.integration
def test_prepared_data_copied_from_another_config_stops_training(tmp_path):
    (tmp_path / "a").mkdir()
    assert snakemake(tmp_path / "a", LG).returncode == 0
    other = {**LG, "datasets": {"linear_gaussian": {**LG["datasets"]["linear_gaussian"],
                                                    "data": {**LG["datasets"]["linear_gaussian"]["data"],
                                                             "n_train": 200}}}}
    shutil.copytree(tmp_path / "a" / "data", tmp_path / "b" / "data")  # (b is created by the copy)
    done = snakemake(tmp_path / "b", other)
    assert done.returncode != 0
    log = (tmp_path / "b" / RUN / "train.log").read_text()
    assert "'n_train': 300" in log and "'n_train': 200" in log and "delete" in log
    assert not (tmp_path / "b" / RUN / "model.pt").exists()


@pytest.mark.integration
def test_a_corrupt_or_crafted_model_file_is_never_used(tmp_path):
    assert snakemake(tmp_path, LG).returncode == 0
    model = tmp_path / RUN / "model.pt"
    good = json.loads((tmp_path / RUN / "metrics.json").read_text())["metrics"]["test_nll"]
    # a corrupt file: a copy kept, a message, the cell retrained (from its checkpoint) and re-evaluated
    model.write_bytes(model.read_bytes()[:-100])
    done = snakemake(tmp_path, LG)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the cell will be trained again" in done.stderr and (tmp_path / RUN / "model.pt.corrupt").exists()
    assert "resumed from" in (tmp_path / RUN / "train.log").read_text()
    metrics = json.loads((tmp_path / RUN / "metrics.json").read_text())
    assert metrics["metrics"]["test_nll"] == good and metrics["model_sha256"] == sha256_of(model)
    # a crafted pickle with a matching checksum: refused by the job that reads it, nothing executed,
    # and the leaderboard no longer counts the cell's old numbers (its model is not the one evaluated)
    marker = tmp_path / MARKER
    crafted(model, marker)
    done = snakemake(tmp_path, LG)
    assert done.returncode != 0 and not marker.exists()
    logs = " ".join(p.read_text() for p in tmp_path.glob("results/**/*.log"))
    assert "cannot be read safely" in logs
    board = pd.read_csv(tmp_path / "results/leaderboard.csv").set_index("method")
    assert board.loc["avi", "status"] == "stale" and "model file changed" in board.loc["avi", "status_note"]


@pytest.mark.integration
def test_killing_the_head_outright_leaves_no_job_running_and_the_rerun_resumes(tmp_path):
    """kill -9 of the Snakemake head: the fork server sees its head die and stops the jobs it forked, so no
    training keeps running; the rerun needs `--unlock` first (Snakemake's lock stays; the README says so),
    then resumes the training from its checkpoint and finishes."""
    import time

    import psutil

    slow = {**LG, "datasets": {"linear_gaussian": {"data": {"n_train": 20000, "n_valid": 50, "n_test": 50},
                                                   "train": {"epochs": 40, "batch_size": 10}}}}
    path = tmp_path / "config.yaml"
    path.write_text(__import__("yaml").safe_dump(slow))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", str(path), "--cores", "2"]
    head = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / RUN / "train.log"
    deadline = time.time() + 180
    while not (log.exists() and "epoch 1:" in log.read_text()):
        assert time.time() < deadline and head.poll() is None, "training did not start"
        time.sleep(0.2)
    server = [p for p in psutil.Process(head.pid).children() if "benchmarks.forkserver" in " ".join(p.cmdline())]
    assert server, "the local run has no fork server"
    jobs = server[0].children()
    assert jobs, "the training job is not a child of the fork server"
    head.kill()
    head.wait()
    for process in server + jobs:
        process.wait(timeout=20)  # each one exits: nothing keeps training
    locked = snakemake(tmp_path, slow)
    assert locked.returncode != 0 and "unlock" in locked.stderr
    assert snakemake(tmp_path, slow, "--unlock").returncode == 0
    done = snakemake(tmp_path, slow)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in log.read_text()
