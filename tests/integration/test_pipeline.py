"""The whole Snakemake pipeline on a tiny config in a temporary directory, and a killed training job."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
import torch
import yaml

from benchmarks.io import _umask, write_json
from benchmarks.provenance import REPO_ROOT
from benchmarks.runtime import load_model
from benchmarks.suite import resolve_cell, stage_view

pytestmark = pytest.mark.integration
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

TINY = {
    "device": "cpu",
    "seeds": [0],
    "methods": ["avi"],
    "datasets": {
        "mnist5k": {"model": {"latent_dim": 4, "hidden": [32]}, "train": {"epochs": 2},
                    "eval": {"max_test_points": 100}},
        "linear_gaussian": {"data": {"n_train": 200, "n_valid": 50, "n_test": 50}, "train": {"epochs": 3}},
    },
    "train": {"batch_size": 100, "lr": 1.0e-3},
    "eval": {"is_samples": 50, "timing_repeats": 3, "timing_warmup": 1},
    "gaps": {"enabled": True, "points": {"test": 20}, "elbo_samples": 100, "eval_samples": 100,
             "local": {"samples": 10, "check_every": 20, "patience": 2, "max_steps": 200, "lr": 0.01},
             "ais": {"intermediate": 20, "chains": 4}},
}


def snakemake(workdir: Path, config: dict, *extra: str) -> subprocess.CompletedProcess:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [*SNAKEMAKE, "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(path), "--cores", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny pipeline, run once for the tests of this module that only read its outputs."""
    workdir = tmp_path_factory.mktemp("tiny")
    done = snakemake(workdir, TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def test_pipeline_end_to_end(tiny_run):
    tmp_path = tiny_run
    results = tmp_path / "results"
    board = pd.read_csv(results / "leaderboard.csv")
    rows = board.set_index(["dataset", "method"])
    for dataset in ("mnist5k", "linear_gaussian"):
        nll = rows.loc[(dataset, "avi"), "test_nll_mean"]
        assert 0 < nll < 1000 and rows.loc[(dataset, "avi"), "infer_ms_mean"] > 0
        image = matplotlib.image.imread(results / f"pareto_{dataset}.png")
        assert image.shape[0] > 200 and float(image[..., :3].std()) > 0.01  # a drawn figure, not blank
    # the linear-Gaussian row shows the true NLL beside the estimate; the IS estimate is close to exact
    assert not pd.isna(rows.loc[("linear_gaussian", "(true model)"), "test_nll_mean"])
    lg = rows.loc[("linear_gaussian", "avi")]
    assert abs(lg["test_nll_mean"] - lg["exact_nll_mean"]) < 0.5
    markdown = (results / "leaderboard.md").read_text()
    assert "## mnist5k" in markdown and "avi" in markdown and "S = 50" in markdown
    assert (results / "leaderboard.tex").read_text().count("\\begin{tabular}") == 2
    assert pd.read_parquet(results / "leaderboard.parquet").shape[0] == len(board)
    long = pd.read_parquet(results / "metrics_long.parquet")
    assert {"git_commit", "device_name", "config_hash", "date"} <= set(long.columns)
    metrics = json.loads((results / "mnist5k/avi/seed0/metrics.json").read_text())
    assert metrics["provenance"]["versions"]["torch"] == torch.__version__.split("+")[0] or \
        metrics["provenance"]["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert (results / "mnist5k/avi/seed0/train.benchmark.tsv").exists()
    for figure in ("reconstructions.png", "samples.png"):
        image = matplotlib.image.imread(results / "mnist5k/avi/seed0" / figure)
        assert float(image[..., :3].std()) > 0.01
    assert oct((results / "leaderboard.md").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    # the inference-gap decomposition ran per cell and is tabulated per dataset
    gaps = pd.read_csv(results / "gaps.csv").set_index(["dataset", "method", "split"])
    row = gaps.loc[("linear_gaussian", "avi", "test")]
    assert row["points"] == 20 and row["inference gap mean"] > 0
    assert abs(row["approximation gap mean"] + row["amortization gap mean"] - row["inference gap mean"]) < 1e-9
    assert "## mnist5k (test)" in (results / "gaps.md").read_text()
    assert (results / "gaps_mnist5k.png").exists()
    # everything is cached: a second run has nothing to do
    again = snakemake(tmp_path, TINY)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # a changed option reruns only the cells it touches
    changed = {**TINY, "datasets": {**TINY["datasets"],
                                    "linear_gaussian": {**TINY["datasets"]["linear_gaussian"], "train": {"epochs": 4}}}}
    dry = snakemake(tmp_path, changed, "-n")
    assert "linear_gaussian/avi/seed0/model.pt" in dry.stdout and "mnist5k/avi/seed0/model.pt" not in dry.stdout


def test_bad_config_fails_before_any_job(tmp_path):
    bad = {**TINY, "methods": ["avi", "not_a_method"]}
    done = snakemake(tmp_path, bad)
    assert done.returncode != 0
    assert "not_a_method" in done.stderr + done.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_killed_training_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL a real training process after its second epoch; the rerun resumes and ends with the
    same model as an uninterrupted run."""
    config = {**TINY, "datasets": {"linear_gaussian": {"data": {"n_train": 4000, "n_valid": 50, "n_test": 50}}},
              "train": {"epochs": 40, "batch_size": 20, "lr": 1e-3}}
    cell = stage_view(resolve_cell(config, "linear_gaussian", "avi", 0), "train")
    write_json(tmp_path / "cell.json", cell)
    data = tmp_path / "lg.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cli = [sys.executable, "-m", "benchmarks.cli"]
    subprocess.run([*cli, "prepare", "linear_gaussian", "--options", json.dumps(cell["data"]),
                    "--out", str(data)], check=True, env=env, capture_output=True)

    def train(run_dir: Path) -> subprocess.Popen:
        return subprocess.Popen([*cli, "train", "--cell", str(tmp_path / "cell.json"), "--data", str(data),
                                 "--model", str(run_dir / "model.pt"), "--history", str(run_dir / "train_log.csv"),
                                 "--state-dir", str(run_dir / "state"), "--threads", "1", "--no-progress"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    straight = train(tmp_path / "straight")
    interrupted = train(tmp_path / "killed")
    checkpoint = tmp_path / "killed" / "state" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline:
        if checkpoint.exists() and torch.load(checkpoint, weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.05)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait()
    assert interrupted.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (tmp_path / "killed" / "model.pt").exists()
    killed_at = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= killed_at < 39

    resumed = train(tmp_path / "killed")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert f"resumed from {checkpoint} after epoch" in output
    assert straight.wait(timeout=600) == 0
    a = load_model(tmp_path / "straight" / "model.pt", cell["hashes"]["train"])
    b = load_model(tmp_path / "killed" / "model.pt", cell["hashes"]["train"])
    assert a.meta["best_epoch"] == b.meta["best_epoch"] and a.meta["best_valid_elbo"] == b.meta["best_valid_elbo"]
    for key in a.state:
        assert torch.equal(a.state[key], b.state[key]), key


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not DEBIAN_FASHION.is_dir(),
                                   reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")


@pytest.mark.realdata
@needs_fashion
def test_real_fashion_mnist_trains_and_evaluates(tmp_path):
    config = {**TINY, "datasets": {"fashion_mnist": {
        "data": {"train_subset": 2000, "test_subset": 300, "n_valid": 500},
        "model": {"latent_dim": 8, "hidden": [64]}, "train": {"epochs": 3}}}}
    done = snakemake(tmp_path, config)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "results/fashion_mnist/avi/seed0/metrics.json").read_text())["metrics"]
    # a trained model beats the uniform Bernoulli (784 ln 2 = 543 nats) by far, and the IS bound is above the ELBO
    assert 100 < metrics["test_nll"] < 400 and metrics["test_nll"] <= -metrics["test_elbo"]
    board = pd.read_csv(tmp_path / "results/leaderboard.csv")
    assert list(board["dataset"]) == ["fashion_mnist"]


@pytest.mark.realdata
@needs_fashion
def test_corrupt_raw_file_stops_before_any_training(tmp_path):
    raw = tmp_path / "broken"
    raw.mkdir()
    for source in DEBIAN_FASHION.glob("*.gz"):
        data = source.read_bytes()
        (raw / source.name).write_bytes(data[: len(data) // 3] if source.name.startswith("train-images") else data)
    config = {**TINY, "datasets": {"fashion_mnist": {"data": {"root": str(raw), "download": False}}}}
    done = snakemake(tmp_path, config)
    assert done.returncode != 0
    log = (tmp_path / "data/prepared/fashion_mnist.log").read_text()
    assert "train-images-idx3-ubyte.gz is corrupt or truncated" in log
    assert not (tmp_path / "data/prepared/fashion_mnist.pt").exists()
    assert not list(tmp_path.glob("results/**/train.log"))  # no training job started


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args,
           page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def not_blank(png: Path) -> bool:
    image = matplotlib.image.imread(png)[..., :3]
    return float(image.std()) > 0.05 and float((image < 0.9).mean()) > 0.02


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_pages_render_in_a_browser(tiny_run, tmp_path):
    """The Snakemake report bundle and results/index.html, rendered by headless Chromium."""
    bundle = tiny_run / "report.html"
    made = subprocess.run([*SNAKEMAKE, "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(tiny_run),
                           "--configfile", str(tiny_run / "config.yaml"), "--report", str(bundle)],
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    dom = chromium(bundle, tmp_path / "profile", "--dump-dom").stdout
    for category in ("Leaderboards", "Pareto plots", "Training curves", "Reconstructions", "Samples"):
        assert category in dom, category
    chromium(bundle, tmp_path / "profile", "--window-size=1280,900", f"--screenshot={tmp_path / 'bundle.png'}")
    assert not_blank(tmp_path / "bundle.png")

    page = tiny_run / "results" / "index.html"
    dom = chromium(page, tmp_path / "profile", "--dump-dom").stdout
    assert dom.count('class="dataframe leaderboard"') == 2 and dom.count('class="dataframe gaps"') == 2
    assert "<td>avi</td>" in dom and "<td>(true model)</td>" in dom
    # per dataset: a Pareto plot, training curves and the gaps bar chart
    assert dom.count('src="data:image/png;base64,') == 6
    chromium(page, tmp_path / "profile", "--window-size=1280,1400", f"--screenshot={tmp_path / 'page.png'}")
    assert not_blank(tmp_path / "page.png")
