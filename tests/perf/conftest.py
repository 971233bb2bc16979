"""Perf cases report their measured ratios at the end of the run (no timed assertions anywhere).

Speed is only ever a ratio measured within one process, the variants interleaved round-robin over several
rounds (tests/perf/interleave.py), each ratio reported with its spread over the rounds (median and IQR)."""
from __future__ import annotations

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


def refining_recmix(model, components: int, batched: bool = True):
    """RecMix of M components in its trained state (all components, all weights set), in eval mode."""
    from methods import build_method

    method = build_method("recmix", model, {"components": components, "batched": batched}).eval()
    method.on_epoch_start(10**6)
    method.weights_set = components
    return method


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
