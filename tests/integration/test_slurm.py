"""The pipeline through Snakemake's SLURM executor plugin, on a real one-node SLURM cluster.

The cluster is the one tests/cluster/start_slurm.sh starts (CI runs it before the tests; the fixture below runs
it too when no node is up). The SLURM tests are skipped, with the reason, only where those daemons cannot start.

To stay within a few minutes on two cores, the cancel-and-resume scenario and the end-to-end comparison share
one SLURM story (the `slurm_story` fixture), compared against one uninterrupted local run of the same config
that runs alongside. profiles/slurm-ci submits one SLURM job per rule, the evaluate jobs batched:

  * config: TINY from test_pipeline.py, with the linear-Gaussian cell trained long enough to be cancelled;
  * SLURM run 1: prepare_data and train for both datasets; the linear-Gaussian training job is `scancel`ed once
    its checkpoint exists, and Snakemake stops with an error (mnist5k's training job completes);
  * SLURM run 2: the same command again: a new job resumes the linear-Gaussian training from its checkpoint,
    then one job evaluates both cells (and draws their figures), an exclusive job per dataset times its methods,
    and the report job writes the leaderboard.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

from benchmarks.provenance import REPO_ROOT
from tests.helpers import planned_resources
from benchmarks.suite import cells
from tests.integration.test_pipeline import SNAKEMAKE, TINY, snakemake

pytestmark = pytest.mark.integration

SLURM_PROFILE = REPO_ROOT / "profiles" / "slurm"
SLURM_CI_PROFILE = REPO_ROOT / "profiles" / "slurm-ci"
LOCAL_PROFILE = REPO_ROOT / "profiles" / "local"
START_SLURM = REPO_ROOT / "tests" / "cluster" / "start_slurm.sh"
TIMING_PREFIXES = ("infer_ms_", "train_s")  # wall-clock measurements: differ between any two runs

# TINY, except that the linear-Gaussian training lasts long enough (30 epochs of 100 steps, 10-30 s here) to be
# cancelled after its first checkpoint; mnist5k is TINY's cell unchanged.
EPOCHS = 30
STORY = copy.deepcopy(TINY)
STORY["methods"] = ["avi"]  # one training job per dataset: the one of linear_gaussian is the one cancelled
STORY["datasets"]["linear_gaussian"] = {"data": {"n_train": 2000, "n_valid": 50, "n_test": 50},
                                        "train": {"epochs": EPOCHS, "batch_size": 20}}
LG_CELL = Path("results/linear_gaussian/avi/seed0")
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: ([^)]*)\)")


# --------------------------------------------------------------------------------------------------- helpers
def _node_state() -> str | None:
    if shutil.which("sinfo") is None:
        return None
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return done.stdout.split()[0].strip("*~#!%$@^-") if done.returncode == 0 and done.stdout.split() else None


def _job_states(job_ids) -> dict[str, str]:
    """SLURM state of each job id (finished jobs stay listed for MinJobAge = 3600 s on the test cluster)."""
    done = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T", "-j", ",".join(job_ids)],
                          capture_output=True, text=True, timeout=30)
    return dict(line.split("|") for line in done.stdout.split())


def _submissions(output: str) -> dict[str, str]:
    """SLURM job id -> SLURM log of every job Snakemake submitted (the path names the rule or group)."""
    return {job: log for job, log in SUBMITTED.findall(output)}


def _ran(log_text: str, rule: str, dataset: str) -> bool:
    """Whether a SLURM job's log shows Snakemake running `rule` for `dataset` in that job."""
    return re.search(rf"rule {rule}:\n(?:\s+\w+: .*\n)*?\s+wildcards: dataset={dataset}\b", log_text) is not None


def _start(workdir: Path, config: dict, *extra: str, log_name: str) -> tuple[subprocess.Popen, Path]:
    """The `snakemake()` helper's command, in the background, its output to a file."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = workdir.parent / log_name
    cmd = [*SNAKEMAKE, "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(path), "--cores", "2", *extra]
    with open(log, "w") as handle:
        return subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, text=True), log


def _wait(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{proc.args[-3:]} did not finish in {timeout} s:\n{log.read_text()[-3000:]}")
    return log.read_text()


def _checkpoint_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["epoch"])
    except (FileNotFoundError, EOFError, RuntimeError, KeyError):
        return None  # not written yet (it is replaced atomically, so a partial read is not expected)


def assert_same_leaderboard(slurm: pd.DataFrame, local: pd.DataFrame) -> list[str]:
    """Same rows, same text columns, and every numeric non-timing column equal within 1e-9."""
    key = ["dataset", "method"]
    slurm, local = slurm.sort_values(key).reset_index(drop=True), local.sort_values(key).reset_index(drop=True)
    assert list(slurm.columns) == list(local.columns)
    assert slurm[key].equals(local[key]), (slurm[key], local[key])
    numeric = [c for c in slurm.columns if pd.api.types.is_numeric_dtype(local[c])]
    compared = [c for c in numeric if not c.startswith(TIMING_PREFIXES)]
    for column in slurm.columns:
        if column in compared:
            a, b = slurm[column].to_numpy(float), local[column].to_numpy(float)
            for row, (x, y) in enumerate(zip(a, b)):
                assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-9, \
                    f"{column} of {tuple(slurm.loc[row, key])}: SLURM {x!r} != local {y!r}"
        elif column not in numeric:
            assert slurm[column].astype(str).equals(local[column].astype(str)), column
    return compared


# -------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def slurm_cluster():
    """A one-node SLURM cluster with a node up: already running, or started by tests/cluster/start_slurm.sh."""
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.fail("snakemake-executor-plugin-slurm is not installed (it is a dependency of the SLURM profiles)")
    if _node_state() not in ("idle", "mix", "alloc"):
        if os.geteuid() != 0:
            pytest.skip("no SLURM node is up and starting the daemons needs root: run tests/cluster/start_slurm.sh")
        started = subprocess.run(["bash", str(START_SLURM)], capture_output=True, text=True, timeout=900)
        if started.returncode != 0:
            pytest.skip(f"the SLURM daemons could not start ({START_SLURM.name}): "
                        f"{(started.stderr or started.stdout).strip()[-1500:]}")
    state = _node_state()
    if state not in ("idle", "mix", "alloc"):
        pytest.skip(f"`sinfo` shows no usable SLURM node (state: {state})")
    return state


@pytest.fixture(scope="module")
def slurm_story(slurm_cluster, tmp_path_factory):
    """Run STORY under SLURM with a cancelled and resumed training job, and locally without interruption."""
    root = tmp_path_factory.mktemp("slurm_story")
    local_dir, slurm_dir = root / "local", root / "slurm"
    profile = ("--profile", str(SLURM_CI_PROFILE))
    t0 = time.time()
    local = first = None
    first_log = None
    try:
        local, local_log = _start(local_dir, STORY, log_name="local.log")  # the reference, meanwhile
        first, first_log = _start(slurm_dir, STORY, *profile, log_name="slurm_run1.log")

        checkpoint = slurm_dir / LG_CELL / "state" / "last.pt"
        deadline = time.time() + 420
        while (_checkpoint_epoch(checkpoint) or 0) < 1:
            if first.poll() is not None:
                pytest.fail("SLURM run 1 ended before the training checkpoint existed:\n"
                            + first_log.read_text()[-3000:])
            if time.time() > deadline:
                first.kill()
                pytest.fail(f"no checkpoint after 420 s:\n{first_log.read_text()[-3000:]}")
            time.sleep(0.2)
        train_jobs = [job for job, log in _submissions(first_log.read_text()).items()
                      if Path(log).exists() and _ran(Path(log).read_text(), "train", "linear_gaussian")]
        assert len(train_jobs) == 1, first_log.read_text()[-3000:]
        cancelled = train_jobs[0]
        subprocess.run(["scancel", cancelled], check=True, timeout=30)
        run1 = _wait(first, first_log, timeout=300)
        cancelled_state = _job_states([cancelled]).get(cancelled)
        killed_at = _checkpoint_epoch(checkpoint)
        model_after_cancel = (slurm_dir / LG_CELL / "model.pt").exists()

        second = snakemake(slurm_dir, STORY, *profile)
        assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
        run2 = second.stdout + second.stderr
        submitted = {**_submissions(run1), **_submissions(run2)}
        states = _job_states(list(submitted))
        slurm_logs = {job: Path(log).read_text() for job, log in submitted.items()}
        local_out = _wait(local, local_log, timeout=600)
        assert local.returncode == 0, local_out[-3000:]
    finally:  # on a failure above: stop what this fixture started, by process and SLURM job id
        for proc in (local, first):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if first_log is not None and first_log.exists():
            left = [job for job, state in _job_states(list(_submissions(first_log.read_text()))).items()
                    if state in ("PENDING", "RUNNING", "CONFIGURING", "SUSPENDED")]
            if left:
                subprocess.run(["scancel", *left], timeout=30)
    return SimpleNamespace(
        local=local_dir, slurm=slurm_dir, run1=run1, run1_rc=first.returncode, run2=run2, states=states,
        slurm_logs=slurm_logs,
        cancelled=cancelled, cancelled_state=cancelled_state, killed_at=killed_at,
        model_after_cancel=model_after_cancel, seconds=time.time() - t0,
    )


# ----------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("profile", [SLURM_PROFILE, LOCAL_PROFILE], ids=["slurm", "local"])
def test_dry_run_shows_gpu_requests(tmp_path, profile):
    """A paper-scale-like suite on CUDA whose config declares memory and run time (and, for the local profile,
    the GPUs): the dry run (no GPU, no cluster needed) shows one GPU requested by every train, evaluate,
    timing and gaps job, none by the CPU rules, and the config's memory and run time kept (the profile does
    not override them)."""
    config = yaml.safe_load((REPO_ROOT / "config" / "default.yaml").read_text())
    config.update(device="cuda", seeds=[0, 1, 2], gaps={"enabled": True},
                  resources={"prepare_data": {"mem_mb": 32000}, "train": {"mem_mb": 16000, "runtime": 2880},
                             "evaluate": {"mem_mb": 12000, "runtime": 240}})
    if profile == LOCAL_PROFILE:  # one machine: the GPU requests come from the config (as in config/papers/)
        for rule in ("train", "evaluate", "timing", "gaps"):
            config["resources"].setdefault(rule, {})["gpu"] = 1
    path = tmp_path / "gpu_suite.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([*SNAKEMAKE, "-n", "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory",
                           str(tmp_path), "--profile", str(profile), "--configfile", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    requests = planned_resources(done.stdout)  # rule -> the resources of each of its jobs
    expected = cells(config)
    assert len(expected) >= 3 and len(requests.get("train", [])) == len(expected), requests.keys()
    assert len(requests.get("evaluate", [])) == len(expected)
    assert len(requests.get("gaps", [])) == len(expected)
    for rule in ("train", "evaluate", "timing", "gaps"):
        assert all(job.get("gpu") == "1" for job in requests[rule]), (rule, requests[rule])
    assert len(requests["timing"]) == len(config["datasets"])  # one timing job per dataset
    for rule in ("prepare_data", "report"):
        assert requests.get(rule) and all(job.get("gpu", "0") == "0" for job in requests[rule]), rule
    # the config's declarations survive the profile
    assert {(job["mem_mb"], job["runtime"]) for job in requests["train"]} == {("16000", "2880")}
    assert {(job["mem_mb"], job["runtime"]) for job in requests["evaluate"]} == {("12000", "240")}
    assert {job["mem_mb"] for job in requests["prepare_data"]} == {"32000"}
    if profile == SLURM_PROFILE:
        for rule in ("prepare_data", "train", "evaluate", "timing", "gaps", "report"):
            assert all(int(job["runtime"]) > 0 and int(job["mem_mb"]) > 0 for job in requests[rule]), rule
        for rule in ("prepare_data", "report"):
            assert all(int(job["cpus_per_task"]) >= 1 for job in requests[rule]), rule
        # the timing job has its node to itself; the many small evaluations are packed into SLURM jobs
        assert all("--exclusive" in job.get("slurm_extra", "") for job in requests["timing"])
        assert "Group job evaluate_batch" in done.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_slurm_pipeline_matches_local_run(slurm_story):
    """Every rule ran inside a SLURM job that completed (evaluations batched), and the leaderboard equals the
    local run's, timings aside."""
    logs, states, cancelled = slurm_story.slurm_logs, slurm_story.states, slurm_story.cancelled
    assert len(states) == len(logs) >= 6, (states, logs.keys())  # squeue knows every job Snakemake submitted
    assert {job: state for job, state in states.items() if job != cancelled} == \
        {job: "COMPLETED" for job in logs if job != cancelled}
    completed = {job: text for job, text in logs.items() if job != cancelled}
    rules = ["prepare_data", "train", "evaluate", "timing"]
    rules += ["gaps"] if STORY.get("gaps", {}).get("enabled") else []
    for rule in rules:
        for dataset in ("mnist5k", "linear_gaussian"):
            assert any(_ran(text, rule, dataset) for text in completed.values()), (rule, dataset)
    assert any("rule report:" in text for text in completed.values())
    # the profile's group: the evaluations of both datasets' cells in one SLURM job
    batches = [job for job, text in completed.items()
               if _ran(text, "evaluate", "mnist5k") and _ran(text, "evaluate", "linear_gaussian")]
    assert len(batches) == 1, batches

    slurm_board = pd.read_csv(slurm_story.slurm / "results" / "leaderboard.csv")
    local_board = pd.read_csv(slurm_story.local / "results" / "leaderboard.csv")
    compared = assert_same_leaderboard(slurm_board, local_board)
    assert {"test_nll_mean", "test_elbo_mean", "test_kl_mean", "active_units_mean"} <= set(compared)
    rows = slurm_board.set_index(["dataset", "method"])
    for dataset in ("mnist5k", "linear_gaussian"):
        assert 0 < rows.loc[(dataset, "avi"), "test_nll_mean"] < 1000
        assert rows.loc[(dataset, "avi"), "infer_ms_bB_median"] > 0
    assert (slurm_story.slurm / "results" / "pareto_mnist5k.png").stat().st_size > 0


def test_cancelled_training_job_resumes(slurm_story):
    """`scancel` of the training job mid-run; the rerun resumes from its checkpoint and ends with the same
    training history and metrics as the uninterrupted run."""
    assert slurm_story.run1_rc != 0, slurm_story.run1[-3000:]
    assert slurm_story.cancelled_state == "CANCELLED", slurm_story.cancelled_state
    # Snakemake saw the cancellation through `squeue` (the CI profile's status command)
    assert f"SLURM-job '{slurm_story.cancelled}' failed, SLURM status is: 'CANCELLED'" in slurm_story.run1
    assert not slurm_story.model_after_cancel
    assert slurm_story.killed_at is not None and 1 <= slurm_story.killed_at < EPOCHS - 1, slurm_story.killed_at

    train_log = (slurm_story.slurm / LG_CELL / "train.log").read_text()
    assert f"resumed from {LG_CELL / 'state' / 'last.pt'} after epoch {slurm_story.killed_at}" in train_log
    assert train_log.count("epoch 0:") == 0  # the rerun did not start over
    # the resumed training ran in a new SLURM job of the second run
    assert any(_ran(slurm_story.slurm_logs[job], "train", "linear_gaussian") for job in _submissions(slurm_story.run2))

    resumed = pd.read_csv(slurm_story.slurm / LG_CELL / "train_log.csv")
    straight = pd.read_csv(slurm_story.local / LG_CELL / "train_log.csv")
    assert len(resumed) == len(straight) > slurm_story.killed_at + 1
    for column in [c for c in straight.columns if c != "seconds"]:
        assert resumed[column].tolist() == straight[column].tolist(), column
    a = json.loads((slurm_story.slurm / LG_CELL / "metrics.json").read_text())["metrics"]
    b = json.loads((slurm_story.local / LG_CELL / "metrics.json").read_text())["metrics"]
    for name, value in b.items():
        if isinstance(value, (int, float)) and not name.startswith(("infer_ms", "train_s")):
            assert a[name] == pytest.approx(value, abs=1e-9, nan_ok=True), name
    print(f"SLURM story (2 SLURM runs + 1 local run alongside): {slurm_story.seconds:.0f} s", file=sys.stderr)
