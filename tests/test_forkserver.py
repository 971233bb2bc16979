"""The fork server that starts local jobs fast: a job through it behaves like the job run by itself (same
outputs, its own stdout/stderr and exit status), stopping or killing either side leaves no orphan, and jobs
inside a batch system, or of another Python, run themselves."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from benchmarks import forkserver
from benchmarks.datasets import DataSplits, LinearGaussianData
from benchmarks.provenance import REPO_ROOT

pytestmark = pytest.mark.integration
LG = json.dumps({"n_train": 200, "n_valid": 20, "n_test": 20})


@pytest.fixture
def server(tmp_path):
    """A fork server owned by a stand-in head process (a sleeping child of the test)."""
    head = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    path = str(tmp_path / "socket")
    Path(path + ".starting").touch()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.forkserver", path, str(head.pid)],
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    deadline = time.time() + 120
    while not os.path.exists(path):
        assert time.time() < deadline and proc.poll() is None, "the fork server did not come up"
        time.sleep(0.05)
    yield path, proc, head
    for p in (proc, head):
        if p.poll() is None:
            p.kill()
            p.wait()


def run_cli(args: list[str], cwd: Path, socket_path: str | None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop(forkserver.ENV, None)
    if socket_path:
        env[forkserver.ENV] = socket_path
    env.update(kwargs.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "benchmarks.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def children_of(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def test_a_job_through_the_server_is_the_same_job(server, tmp_path):
    path, proc, _ = server
    through = run_cli(["prepare", "linear_gaussian", "--options", LG, "--out", "a.pt", "--cost", "a.json"],
                      tmp_path, path)
    out, err = through.communicate(timeout=120)
    direct = run_cli(["prepare", "linear_gaussian", "--options", LG, "--out", "b.pt"], tmp_path, None)
    direct.communicate(timeout=120)
    assert through.returncode == direct.returncode == 0, err
    assert "prepared linear_gaussian" in err  # the child wrote to the job's own stderr
    a, b = DataSplits.load(tmp_path / "a.pt"), DataSplits.load(tmp_path / "b.pt")
    for split in ("train", "valid", "test"):  # (the files' bytes differ: torch.save stamps a random id)
        assert torch.equal(getattr(a, split), getattr(b, split))
    cost = json.loads((tmp_path / "a.json").read_text())
    assert cost["forked"] and cost["startup_s"] < 1.0  # no torch import in the job: it came from the server
    # an error keeps its message and exit status
    bad = run_cli(["prepare", "linear_gaussian", "--options", '{"n_tarin": 3}', "--out", "c.pt"], tmp_path, path)
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 2 and "n_tarin" in err


@pytest.mark.parametrize("last", ["head", "server"])
def test_killing_the_job_the_head_or_the_server_leaves_no_orphan(server, tmp_path, last):
    path, proc, head = server
    run_cli(["prepare", "linear_gaussian", "--options", json.dumps({"n_train": 20000}), "--out", "d.pt"],
            tmp_path, path).communicate(timeout=120)
    cell = {"dataset": "linear_gaussian", "dataset_kind": "linear_gaussian", "method": "avi", "seed": 0,
            "device": "cpu", "deterministic": True, "data": {}, "model": {}, "method_config": {},
            "train": {"epochs": 500, "batch_size": 10}, "resume": None, "hashes": {"train": "t"}}
    cell["data"] = LinearGaussianData(n_train=20000).to_dict()
    (tmp_path / "cell.json").write_text(json.dumps(cell))
    args = ["train", "--cell", "cell.json", "--data", "d.pt", "--model", "m.pt", "--history", "h.csv",
            "--state-dir", "state", "--no-progress"]
    for victim in ("child", "job", last):
        job = run_cli(args, tmp_path, path)
        deadline = time.time() + 60
        while not children_of(proc.pid):
            assert time.time() < deadline, "the job's child did not start"
            time.sleep(0.05)
        child = children_of(proc.pid)[0]
        if victim == "child":  # e.g. the out-of-memory killer: the job fails, saying how
            child.kill()
            _, err = job.communicate(timeout=30)
            assert job.returncode == 128 + signal.SIGKILL and "killed by SIGKILL" in err
        elif victim == "job":
            job.kill()
            job.wait()
            child.wait(timeout=10)  # the server saw the job die and killed its child
            assert not children_of(proc.pid)
        else:
            victim_process = head if victim == "head" else proc
            victim_process.kill()
            victim_process.wait()
            proc.wait(timeout=10)  # the server follows its head (or was killed outright) ...
            child.wait(timeout=10)  # ... and takes the job's child with it
            assert job.wait(timeout=10) != 0  # the job process learns it failed, and exits
    assert os.path.exists(path) == (last == "server")  # a server that could clean up removed its socket


def test_jobs_in_a_batch_system_or_another_python_run_themselves(server, tmp_path, monkeypatch):
    path, _, _ = server
    monkeypatch.setenv(forkserver.ENV, path)
    assert forkserver.usable() == path
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert forkserver.usable() is None
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv(forkserver.ENV, "0")
    assert forkserver.usable() is None
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    assert forkserver.run_through_server("benchmarks.cli", ["validate", "x.yaml"], time.time()) is None
