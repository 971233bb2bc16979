"""The GPU smoke run (benchmarks/smoke.py), checked on the CPU: the command runs its reduced selection end to
end (train, evaluate, gaps, timing, then a CPU reference run that must agree), a failing stage fails its row
and the exit status, and the comparison, the selection and the CPU-noise patch do what they say."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import smoke
from benchmarks.models import FAMILIES
from methods import available_methods

REPO = Path(__file__).resolve().parent.parent
METHODS = ["avi", "svi", "savae"]  # savae: both gradient modes (savae, savae:fd)
FAMILIES_ASKED = ["bernoulli_mlp", "lstm_categorical"]


@pytest.fixture
def restore_torch_state(monkeypatch):
    """main() sets CUBLAS_WORKSPACE_CONFIG and torch's deterministic flags: put them back afterwards."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    flags = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield monkeypatch
    torch._C._set_deterministic_algorithms(flags[0], warn_only=flags[1])


def test_cpu_smoke_command_passes_and_matches_a_second_cpu_run(tmp_path):
    out = tmp_path / "smoke.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.smoke", "--device", "cpu", "--methods", ",".join(METHODS),
                           "--families", ",".join(FAMILIES_ASKED), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASSED" in done.stdout and "method" in done.stdout.splitlines()[1]
    payload = json.loads(out.read_text())
    assert payload["passed"] and payload["device"] == "cpu"
    rows = {(r["method"], r["family"]): r for r in payload["rows"]}
    asked = {(m, f) for m in ["avi", "svi", "savae", "savae:fd"] for f in FAMILIES_ASKED}
    assert set(rows) == asked
    for key, row in rows.items():
        assert row["result"] == "pass", (key, row.get("note"), row.get("traceback"))
        assert set(row["stage_seconds"]) == {"train", "evaluate", "gaps", "timing"}, key
        # CPU against CPU: the same seed, data and noise give the same numbers, bit for bit
        assert row["comparison"].keys() == smoke.COMPARED.keys()
        assert row["max_relative_difference"] == 0.0, (key, row["comparison"])


def test_a_failing_stage_fails_its_row_and_the_exit_status(restore_torch_state, tmp_path, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    restore_torch_state.setattr(smoke, "time_interleaved", broken)
    out = tmp_path / "smoke.json"
    status = smoke.main(["--device", "cpu", "--methods", "avi", "--families", "linear_gaussian", "--out", str(out)])
    assert status == 1
    (row,) = json.loads(out.read_text())["rows"]
    assert row["result"] == "fail" and row["note"].startswith("timing: RuntimeError: no kernel image")
    assert "FAILED" in capsys.readouterr().out


def test_comparison_tolerance():
    reference = smoke.Run(numbers={name: -100.0 for name in smoke.COMPARED})
    close = smoke.Run(numbers={name: -100.05 for name in smoke.COMPARED})  # 5e-4 relative
    ok, worst, notes, _ = smoke.compare(close, reference, "bernoulli_mlp", torch.device("cuda"))
    assert ok and worst == pytest.approx(5e-4) and not notes
    far = smoke.Run(numbers={**close.numbers, "test_elbo": -100.5})  # 5e-3: beyond rtol 1e-3
    ok, _, _, diffs = smoke.compare(far, reference, "bernoulli_mlp", torch.device("cuda"))
    assert not ok and [k for k, d in diffs.items() if not d["within"]] == ["test_elbo"]
    # AIS / local optimization (discontinuous) and TF32 convolutions on CUDA get the loose tolerance
    loose = smoke.Run(numbers={**close.numbers, "gaps_log_px_ais": -100.5})
    assert smoke.compare(loose, reference, "bernoulli_mlp", torch.device("cuda"))[0]
    ok, _, notes, _ = smoke.compare(far, reference, "conv_image", torch.device("cuda"))
    assert ok == torch.backends.cudnn.allow_tf32 and (notes != []) == torch.backends.cudnn.allow_tf32


def test_selection():
    variants, families = smoke.selection(None, None, quick=False)
    labels = [label for label, _, _ in variants]
    assert {name for _, name, _ in variants} == set(available_methods())
    assert "savae" in labels and "savae:fd" in labels
    assert families == list(smoke.FAMILY_DATA) and set(families) == set(FAMILIES.names())  # every family has data
    assert [label for label, _, _ in smoke.selection("savae:fd", "conv_image", False)[0]] == ["savae:fd"]
    assert smoke.selection(None, None, quick=True)[1] == smoke.QUICK["families"]
    with pytest.raises(smoke.ConfigError, match="unknown method"):
        smoke.selection("nope", None, False)
    with pytest.raises(smoke.ConfigError, match="no smoke data"):
        smoke.selection("avi", "nope", False)


def test_noise_from_cpu_draws_the_cpu_generators_numbers_and_restores_torch():
    originals = torch.randn, torch.rand, torch.randn_like, torch.rand_like
    torch.manual_seed(5)
    expected = torch.randn(3, 2), torch.rand(4), torch.randn(3, 2)
    like = torch.zeros(3, 2, dtype=torch.float64)
    with smoke.noise_from_cpu():
        torch.manual_seed(5)
        drawn = (torch.randn((3, 2), device="cpu"), torch.rand(4, dtype=torch.float32), torch.randn_like(like))
        with_generator = torch.randn(2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(drawn[0], expected[0]) and torch.equal(drawn[1], expected[1])
    assert drawn[2].dtype == torch.float64 and torch.allclose(drawn[2], expected[2].double())
    assert torch.equal(with_generator, torch.randn(2, generator=torch.Generator().manual_seed(1)))
    assert (torch.randn, torch.rand, torch.randn_like, torch.rand_like) == originals
