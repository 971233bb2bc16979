"""SA-VAE training-step cost: exact (double backward) vs finite-difference HVPs vs one AVI step, on the
Cremer MNIST architecture, as ratios measured in one run; plus the peak memory of each mode."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from benchmarks import models
from benchmarks.config import REPO_ROOT
from benchmarks.datasets import DataSplits
from methods import build_method
from methods.base import Step

from .conftest import best_time

K = 20
MODES = {"avi": ("avi", {}),
         "savae-exact": ("savae", {"steps": K, "lr": 0.02, "gradient": "exact"}),
         "savae-fd": ("savae", {"steps": K, "lr": 0.02, "gradient": "finite_difference"})}


def make_step(mode: str):
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((100, 784), 0.2))
    data = DataSplits("mnist5k", "image", "bernoulli", x.byte(), x.byte(), x.byte())
    name, options = MODES[mode]
    method = build_method(name, models.build(data, {"latent_dim": 50, "hidden": [200, 200]}), options)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)

    def step():
        loss = method.loss(x, Step())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


PEAK_SCRIPT = """
import json, resource, sys, torch
torch.set_num_threads(1)
from tests.perf.test_savae_perf import make_step
step = make_step(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(3):
    step()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before))
"""


def peak_extra_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, mode], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.benchmark(group="savae-step")
@pytest.mark.parametrize("mode", list(MODES))
def test_training_step(benchmark, mode):
    benchmark(make_step(mode))


def test_step_ratios_and_memory(measured, report_ratio):
    times = {mode: best_time(make_step(mode), repeats=3) for mode in MODES}
    for mode in ("savae-exact", "savae-fd"):
        report_ratio(f"SA-VAE K={K} training step, {mode}: {times[mode] / times['avi']:.1f}x an AVI step "
                     f"({1000 * times[mode]:.0f} ms vs {1000 * times['avi']:.0f} ms)")
    report_ratio(f"SA-VAE exact / finite-difference step time: {times['savae-exact'] / times['savae-fd']:.2f}")
    for mode in MODES:
        report_ratio(f"peak extra memory of 3 training steps, {mode}: {peak_extra_mb(mode):.0f} MB")
