"""The whole Snakemake pipeline on a tiny config in a temporary directory: outputs, caching, the comparison
protocol's columns, timing isolation, the pages in a browser, and a killed training job."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from benchmarks.io import _umask, write_json
from benchmarks.provenance import REPO_ROOT
from benchmarks.runtime import load_model
from benchmarks.suite import resolve_cell, stage_view
from tests.browser import browser, driver, hover_point, load, problems, row_methods  # noqa: F401

pytestmark = pytest.mark.integration
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

TINY = {
    "device": "cpu",
    "seeds": [0],
    "methods": ["avi", "iaf"],
    "datasets": {
        "mnist5k": {"model": {"latent_dim": 4, "hidden": [32]}, "train": {"epochs": 2},
                    "eval": {"max_test_points": 100}},
        "linear_gaussian": {"data": {"n_train": 200, "n_valid": 50, "n_test": 50}, "train": {"epochs": 3}},
    },
    "train": {"batch_size": 100, "lr": 1.0e-3},
    "eval": {"is_samples": 50},
    "timing": {"rounds": 3, "repeats": 2, "warmup": 1},
    "method_config": {"iaf": {"made_hidden": [16], "context_dim": 4}},
    "gaps": {"enabled": True, "points": {"test": 20}, "elbo_samples": 100, "eval_samples": 100, "family": True,
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
        for method in ("avi", "iaf"):
            row = rows.loc[(dataset, method)]
            assert row["status"] == "ok" and 0 < row["test_nll_mean"] < 1000
            # the comparison protocol's columns: budget, convergence, paired difference, interleaved timing
            assert row["epochs"] == TINY["datasets"][dataset]["train"]["epochs"] and not row["budget_deviates"]
            assert row["decoder_updates"] > 0 and row["train_s"] >= 0 and row["converged"] in (True, False)
            for batch in ("b1", "bB"):
                assert 0 < row[f"infer_ms_{batch}_q1"] <= row[f"infer_ms_{batch}_median"] <= row[f"infer_ms_{batch}_q3"]
        iaf = rows.loc[(dataset, "iaf")]
        assert iaf["dnll_lo"] <= iaf["dnll_mean"] <= iaf["dnll_hi"] and iaf["dnll_over"] == "points"
        assert rows.loc[(dataset, "avi"), "dnll_over"] == "reference"
        image = matplotlib.image.imread(results / f"pareto_{dataset}.png")
        assert image.shape[0] > 200 and float(image[..., :3].std()) > 0.01  # a drawn figure, not blank
    # the linear-Gaussian row shows the true NLL beside the estimate; the IS estimate is close to exact
    assert not pd.isna(rows.loc[("linear_gaussian", "(true model)"), "test_nll_mean"])
    lg = rows.loc[("linear_gaussian", "avi")]
    assert abs(lg["test_nll_mean"] - lg["exact_nll_mean"]) < 0.5
    markdown = (results / "leaderboard.md").read_text()
    assert "## mnist5k" in markdown and "S = 50" in markdown and "Budget policy: 2 epochs per method" in markdown
    assert "Δ NLL vs avi" in markdown and "(reference)" in markdown
    tex = (results / "leaderboard.tex").read_text()
    assert tex.count("\\begin{tabular}") == 2 and "Budget policy" in tex
    assert pd.read_parquet(results / "leaderboard.parquet").shape[0] == len(board)
    long = pd.read_parquet(results / "metrics_long.parquet")
    assert {"git_commit", "device_name", "config_hash", "date"} <= set(long.columns)
    run = results / "mnist5k/avi/seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["provenance"]["versions"]["torch"] == torch.__version__.split("+")[0] or \
        metrics["provenance"]["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    points = pq.read_table(run / "points.parquet")
    assert points.num_rows == 100 and points.schema.metadata[b"eval_hash"].decode() == metrics["hashes"]["eval"]
    assert abs(float(points.column("log_px").to_numpy().mean()) + metrics["metrics"]["test_nll"]) < 1e-9
    assert (run / "train.benchmark.tsv").exists() and (run / "train.cost.json").exists()
    for figure in ("reconstructions.png", "samples.png"):
        assert float(matplotlib.image.imread(run / figure)[..., :3].std()) > 0.01
    assert oct((results / "leaderboard.md").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    # the inference-gap decomposition ran per cell, with q* in both families for iaf
    gaps = pd.read_csv(results / "gaps.csv").set_index(["dataset", "method", "split", "own_family"])
    row = gaps.loc[("linear_gaussian", "avi", "test", False)]
    assert row["points"] == 20 and row["q_star_family"] == "diagonal Gaussian (= own family)"
    assert abs(row["approximation gap mean"] + row["amortization gap mean"] - row["inference gap mean"]) < 1e-9
    assert gaps.loc[("linear_gaussian", "iaf", "test", True), "q_star_family"].startswith("IAF")
    assert "## mnist5k (test points)" in (results / "gaps.md").read_text()
    assert (results / "gaps_mnist5k.png").exists() and (results / "costs.md").exists()
    # everything is cached: a second run has nothing to do
    again = snakemake(tmp_path, TINY)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # a changed option reruns only the cells and stages it touches
    changed = copy.deepcopy(TINY)
    changed["datasets"]["linear_gaussian"]["train"]["epochs"] = 4
    planned = planned_jobs(snakemake(tmp_path, changed, "-n").stdout)
    assert {cell for rule, cell in planned if rule == "train"} == {"linear_gaussian/avi/seed0", "linear_gaussian/iaf/seed0"}
    changed = copy.deepcopy(TINY)
    changed["datasets"]["linear_gaussian"]["eval"] = {"is_samples": 60}
    planned = planned_jobs(snakemake(tmp_path, changed, "-n").stdout)
    assert {rule for rule, _ in planned} == {"cell", "manifest", "evaluate", "report", "all"}
    assert {cell for rule, cell in planned if rule == "evaluate"} == {"linear_gaussian/avi/seed0",
                                                                      "linear_gaussian/iaf/seed0"}


def planned_jobs(dry_run: str) -> list[tuple[str, str]]:
    """(rule, dataset/method/seed or dataset) of every job a dry run plans."""
    jobs, rule = [], None
    for line in dry_run.splitlines():
        if match := re.fullmatch(r"\s*(?:local)?rule (\w+):", line):
            rule = match.group(1)
        elif rule and (match := re.fullmatch(r"\s*wildcards: (.*)", line)):
            values = dict(item.split("=", 1) for item in match.group(1).split(", "))
            key = "/".join(values[k] for k in ("dataset", "method") if k in values)
            jobs.append((rule, key + (f"/seed{values['seed']}" if "seed" in values else "")))
            rule = None
        elif rule and line.strip().startswith("jobid:") and rule in ("manifest", "report", "all"):
            jobs.append((rule, ""))
            rule = None
    return jobs


def test_timing_jobs_never_run_beside_another_job(tiny_run):
    """Every job writes its own start and end times (cost files): no job's interval overlaps a timing
    job's, so inference is timed with nothing else running on the cores."""
    intervals = []
    for path in tiny_run.glob("**/*.cost.json"):
        cost = json.loads(path.read_text())
        intervals.append((cost["rule"], str(path.relative_to(tiny_run)), cost["started"], cost["finished"]))
    timings = [i for i in intervals if i[0] == "timing"]
    assert len(timings) == 2 and len(intervals) >= 2 + 4 + 4 + 2  # prepare, train, evaluate and gaps jobs too
    for rule, name, start, end in timings:
        for other_rule, other, other_start, other_end in intervals:
            if other != name:
                assert other_end <= start or other_start >= end, f"{other} ran during {name}"
    # and the timing jobs ran after every training of their dataset
    for rule, name, start, _ in timings:
        dataset = name.split("/")[1]
        trains = [i for i in intervals if i[0] == "train" and i[1].split("/")[1] == dataset]
        assert trains and all(end <= start for _, _, _, end in trains)


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
    config = {**TINY, "methods": ["avi"], "gaps": {"enabled": False}, "datasets": {"fashion_mnist": {
        "data": {"train_subset": 2000, "test_subset": 300, "n_valid": 500},
        "model": {"latent_dim": 8, "hidden": [64]}, "train": {"epochs": 3}}}}
    done = snakemake(tmp_path, config)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "results/fashion_mnist/avi/seed0/metrics.json").read_text())["metrics"]
    # a trained model beats the uniform Bernoulli (784 ln 2 = 543 nats) by far, and the IS bound is above the ELBO
    assert 100 < metrics["test_nll"] < 400 and metrics["test_nll"] <= -metrics["test_elbo"]
    board = pd.read_csv(tmp_path / "results/leaderboard.csv")
    assert list(board["dataset"]) == ["fashion_mnist"] and list(board["status"]) == ["ok"]


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
def test_snakemake_report_bundle_renders_in_a_browser(tiny_run, tmp_path):
    """The Snakemake report bundle (`make report`), rendered by headless Chromium."""
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



@browser
def test_index_page_sorts_and_hovers_in_a_browser(tiny_run, driver):
    """results/index.html in Chromium (selenium): it loads offline without console errors, a leaderboard
    sorts by test NLL when its header is clicked, and hovering a Pareto point names the method."""
    from selenium.webdriver.common.by import By

    page = (tiny_run / "results" / "index.html").as_uri()
    driver.get_log("browser")
    load(driver, page)
    assert problems(driver.get_log("browser")) == []
    board = pd.read_csv(tiny_run / "results" / "leaderboard.csv")
    lg = board[board["dataset"] == "linear_gaussian"]
    header = driver.find_element(
        By.XPATH, "//table[@id='leaderboard-linear_gaussian']/thead//th[normalize-space(.//button)='test NLL']")
    header.click()
    assert row_methods(driver, "leaderboard-linear_gaussian") == list(lg.sort_values("test_nll_mean")["method"])
    header.click()
    assert row_methods(driver, "leaderboard-linear_gaussian") == list(
        lg.sort_values("test_nll_mean", ascending=False)["method"])
    series = lg.dropna(subset=["timing_hardware"])["timing_hardware"].iloc[0]
    text = hover_point(driver, "pareto-linear_gaussian", series, 0)
    assert "method: " in text and ("avi" in text or "iaf" in text) and "budget: 3 epochs" in text
