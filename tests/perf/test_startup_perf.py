"""Job start-up: a pipeline job run by itself (``python -m benchmarks.cli ...``: Python, torch and the stage's
imports) against the same job through the fork server of a local run (benchmarks/forkserver.py), which
imported them once.

The job is the default suite's smallest: training linear_gaussian / avi for 3 epochs on 200 points. Both
variants run as real processes, interleaved round-robin (one job per variant per round). Reported per
variant from the job's own cost file (``--cost``): start-up = process creation to the stage's first line of
work (Python, torch, the stage's module), work = the stage itself (reading data, building the model, the
epochs, writing), each in seconds and start-up as a share of the two (median and IQR over rounds); and the
paired ratio of the two variants' wall times per job. Both parts shrink through the server (its children
find torch initialized), so the share alone does not show the saving: the seconds and the wall ratio do.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import forkserver
from benchmarks.datasets import LinearGaussianData
from benchmarks.provenance import REPO_ROOT

from .interleave import interleave, ratio_summary, summarize

DATA = LinearGaussianData(n_train=200, n_valid=50, n_test=50)


def job_env(socket_path: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env[forkserver.ENV] = socket_path or "0"
    return env


@pytest.fixture
def server(tmp_path):
    """A fork server whose head is this test process."""
    path = str(tmp_path / "socket")
    Path(path + ".starting").touch()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.forkserver", path, str(os.getpid())],
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    deadline = time.time() + 120
    while not os.path.exists(path):
        assert time.time() < deadline and proc.poll() is None, "the fork server did not come up"
        time.sleep(0.05)
    yield path
    forkserver.stop(path)
    proc.wait(timeout=30)


def test_job_startup_alone_vs_through_the_fork_server(measured, report_ratio, server, tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks.cli", "prepare", "linear_gaussian", "--options",
                    json.dumps(DATA.to_dict()), "--out", "data.pt"], cwd=tmp_path, env=job_env(None), check=True,
                   capture_output=True)
    cell = {"dataset": "linear_gaussian", "dataset_kind": "linear_gaussian", "method": "avi", "seed": 0,
            "device": "cpu", "deterministic": True, "data": DATA.to_dict(), "model": {}, "method_config": {},
            "train": {"epochs": 3}, "resume": None, "hashes": {"train": "perf"}}
    (tmp_path / "cell.json").write_text(json.dumps(cell))
    costs: dict[str, list[dict]] = {"alone": [], "fork server": []}

    def job(variant: str, socket_path: str | None):
        def run():
            folder = tmp_path / variant.replace(" ", "_")
            cost = folder / "cost.json"
            subprocess.run([sys.executable, "-m", "benchmarks.cli", "train", "--cell", "../cell.json", "--data",
                            "../data.pt", "--model", "model.pt", "--history", "history.csv", "--state-dir", "state",
                            "--no-progress", "--cost", str(cost)], cwd=folder, env=job_env(socket_path),
                           check=True, capture_output=True)
            costs[variant].append(json.loads(cost.read_text()))
        return run

    def fresh(variant: str):
        def clean():
            folder = tmp_path / variant.replace(" ", "_")
            subprocess.run(["rm", "-rf", str(folder)], check=True)
            folder.mkdir()
        return clean

    times = interleave({"alone": job("alone", None), "fork server": job("fork server", server)}, rounds=9,
                       repeats=1, warmup=1, before={"alone": fresh("alone"), "fork server": fresh("fork server")})
    rounds = len(times["alone"])
    shares = {v: [c["startup_s"] / (c["startup_s"] + c["work_s"]) for c in costs[v][-rounds:]] for v in costs}
    assert not any(c["forked"] for c in costs["alone"][-rounds:]) and all(c["forked"] for c in costs["fork server"])
    seconds = {v: {k: [c[k] for c in costs[v][-rounds:]] for k in ("startup_s", "work_s")} for v in costs}
    report_ratio(f"job start-up share (linear_gaussian/avi training job, 3 epochs): run alone "
                 f"{summarize(shares['alone']).format('share')}, through the fork server "
                 f"{summarize(shares['fork server']).format('share')}")
    for variant in ("alone", "fork server"):
        report_ratio(f"  {variant}: start-up {summarize(seconds[variant]['startup_s']).format('s')}, work (the stage "
                     f"with its own imports, data, model, 3 epochs) {summarize(seconds[variant]['work_s']).format('s')}")
    report_ratio(f"job wall time, fork server / alone: {ratio_summary(times['fork server'], times['alone'])}")
