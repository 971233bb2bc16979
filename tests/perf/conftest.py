"""Perf cases report their measured ratios at the end of the run (no timed assertions anywhere)."""
from __future__ import annotations

import time

import pytest
import torch

RATIOS: list[str] = []
BATCH, LATENT, HIDDEN = 100, 50, (200, 200)  # the Cremer / IWAE MNIST architecture, 784-200-200-50


@pytest.fixture(scope="module")
def cremer_model_and_batch():
    """The shared generative model of the Cremer / IWAE MNIST setting and a batch of binary inputs."""
    from benchmarks import models
    from benchmarks.datasets import DataSplits

    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((BATCH, 784), 0.2))
    data = DataSplits("mnist5k", "image", "bernoulli", x.byte(), x.byte(), x.byte())
    return models.build(data, {"latent_dim": LATENT, "hidden": list(HIDDEN)}), x


def best_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Minimum wall time of fn() over `repeats` calls after `warmup` calls (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@pytest.fixture
def measured(request):
    """Skip ratio measurements when benchmarks are disabled (`make test`); `make bench` runs them."""
    config = request.config
    if config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"):
        pytest.skip("timing ratios are measured by `make bench` (benchmarks are disabled in `make test`)")


@pytest.fixture
def report_ratio():
    def add(line: str) -> None:
        RATIOS.append(line)

    return add


def pytest_terminal_summary(terminalreporter):
    if RATIOS:
        terminalreporter.section("amortbench perf ratios (measured in this run)")
        for line in RATIOS:
            terminalreporter.write_line(line)
