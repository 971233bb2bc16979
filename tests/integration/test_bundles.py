"""Results that travel: two runs with different seeds, bundled and merged into one leaderboard; a conflicting
duplicate is reported, never silently overwritten; a bundle that holds a pickle payload is refused."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks.errors import DataError
from benchmarks.provenance import REPO_ROOT
from benchmarks.report.bundle import read_bundle, write_bundle
from tests.integration.test_pipeline import snakemake
from tests.reliability.test_reliability import LG, Payload

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "benchmarks.cli"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    for name, seed in (("a", 0), ("b", 1)):
        (root / name).mkdir()
        done = snakemake(root / name, {**LG, "seeds": [seed]})
        assert done.returncode == 0, done.stderr[-2000:]
    return root


def test_two_runs_bundled_and_merged_pool_their_seeds(two_runs):
    root = two_runs
    for name in ("a", "b"):
        done = cli("bundle", "--out", str(root / f"{name}.tar.gz"), cwd=root / name)
        assert done.returncode == 0, done.stderr
    done = cli("merge", str(root / "a.tar.gz"), str(root / "b.tar.gz"), "--out", str(root / "merged"), cwd=root)
    assert done.returncode == 0, done.stderr
    board = pd.read_csv(root / "merged" / "leaderboard.csv").set_index(["dataset", "method"])
    row = board.loc[("linear_gaussian", "avi")]
    singles = [json.loads((root / n / "results/linear_gaussian/avi" / f"seed{s}" / "metrics.json").read_text())
               ["metrics"]["test_nll"] for n, s in (("a", 0), ("b", 1))]
    assert row["seeds"] == 2 and row["status"] == "ok"
    assert row["test_nll_mean"] == pytest.approx(sum(singles) / 2)
    assert row["test_nll_std"] == pytest.approx(pd.Series(singles).std())
    assert row["timing_hardware"] and row["infer_ms_bB_median"] > 0  # one machine: its times are pooled
    assert "± " in (root / "merged" / "leaderboard.md").read_text()
    assert (root / "merged" / "index.html").exists() and "## Conflicts\n\nnone" in (root / "merged" / "merge.md").read_text()
    # a directory works as a source too, and the same run twice counts once
    done = cli("merge", str(root / "a"), str(root / "a.tar.gz"), "--out", str(root / "same"), cwd=root)
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(root / "same" / "leaderboard.csv").set_index("method").loc["avi", "seeds"] == 1


def test_a_conflicting_duplicate_is_reported_not_overwritten(two_runs, tmp_path):
    root = two_runs
    write_bundle(root / "a/results/expected.json", tmp_path / "a.tar.gz")
    # the same cell and seed with a different number, repacked with matching checksums
    extracted = tmp_path / "x"
    read_bundle(tmp_path / "a.tar.gz", extracted)
    metrics = extracted / "cells/linear_gaussian/avi/seed0/metrics.json"
    record = json.loads(metrics.read_text())
    record["metrics"]["test_nll"] += 1.0
    metrics.write_text(json.dumps(record))
    index = json.loads((extracted / "bundle.json").read_text())
    index["files"]["cells/linear_gaussian/avi/seed0/metrics.json"] = hashlib.sha256(metrics.read_bytes()).hexdigest()
    (extracted / "bundle.json").write_text(json.dumps(index))
    with tarfile.open(tmp_path / "altered.tar.gz", "w:gz") as tar:
        for path in sorted(p for p in extracted.rglob("*") if p.is_file()):
            tar.add(path, arcname=str(path.relative_to(extracted)))
    done = cli("merge", str(tmp_path / "a.tar.gz"), str(tmp_path / "altered.tar.gz"), "--out", str(tmp_path / "m"),
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr and "1 conflicts" in done.stdout
    merge_md = (tmp_path / "m" / "merge.md").read_text()
    assert "linear_gaussian/avi seed 0" in merge_md and "counted in none" in merge_md
    board = pd.read_csv(tmp_path / "m" / "leaderboard.csv").set_index("method")
    assert board.loc["avi", "seeds"] == 0  # neither number counts


def test_a_bundle_with_a_pickle_payload_is_refused(two_runs, tmp_path):
    marker = tmp_path / "amortbench-pwned"
    good = write_bundle(two_runs / "a/results/expected.json", tmp_path / "good.tar.gz")
    blob = io.BytesIO()
    torch.save({"format": "amortbench.model/2", "meta": "{}", "state": Payload(marker)}, blob)
    files = {**good["files"], "cells/linear_gaussian/avi/seed0/model.pt": hashlib.sha256(blob.getvalue()).hexdigest()}
    index = {**good, "files": files}
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tar:
        with tarfile.open(tmp_path / "good.tar.gz", "r:gz") as src:
            for member in src.getmembers():
                if member.name != "bundle.json":
                    tar.addfile(member, src.extractfile(member))
        for name, data in (("cells/linear_gaussian/avi/seed0/model.pt", blob.getvalue()),
                           ("bundle.json", json.dumps(index).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="refused.*cannot be read safely"):
        read_bundle(tmp_path / "evil.tar.gz", tmp_path / "out")
    assert not marker.exists()
    # and members a bundle never holds: a path outside it, or another kind of file
    for name in ("../escape.json", "cells/x/notes.pkl"):
        with tarfile.open(tmp_path / "odd.tar.gz", "w:gz") as tar:
            data = json.dumps({**good, "files": {name: "0" * 64}}).encode()
            info = tarfile.TarInfo("bundle.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
        with pytest.raises(DataError, match="refused"):
            read_bundle(tmp_path / "odd.tar.gz", tmp_path / "odd")
        assert not (tmp_path / "escape.json").exists()
