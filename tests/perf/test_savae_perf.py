"""SA-VAE training-step cost: exact (double backward) vs finite-difference HVPs vs one AVI step, on the
Cremer MNIST architecture, as ratios measured in one run; plus the memory each mode keeps for backward."""
from __future__ import annotations

import statistics

import pytest
import torch

from benchmarks import models
from benchmarks.datasets import DataSplits
from methods import build_method
from methods.base import Step

from .interleave import interleave, ratio_summary

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


def saved_for_backward_mb(mode: str) -> float:
    """Megabytes of tensors autograd keeps for the backward pass of one training loss: the memory that
    differs between the modes (exact keeps every step's graph, finite differences only lambda_k, eps_k)."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((100, 784), 0.2))
    data = DataSplits("mnist5k", "image", "bernoulli", x.byte(), x.byte(), x.byte())
    name, options = MODES[mode]
    method = build_method(name, models.build(data, {"latent_dim": 50, "hidden": [200, 200]}), options)
    seen: dict[int, int] = {}

    def pack(tensor):
        seen[id(tensor.untyped_storage())] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        method.loss(x, Step())
    return sum(seen.values()) / 2**20


@pytest.mark.benchmark(group="savae-step")
@pytest.mark.parametrize("mode", list(MODES))
def test_training_step(benchmark, mode):
    benchmark(make_step(mode))


def test_step_ratios_and_memory(measured, report_ratio):
    # the three steps interleaved round-robin; an AVI step (~5 ms) is sampled in runs of >= 20 ms
    times = interleave({mode: make_step(mode) for mode in MODES}, rounds=7, repeats=2, min_sample_s=0.02)
    ms = {mode: 1000 * statistics.median(t) for mode, t in times.items()}
    for mode in ("savae-exact", "savae-fd"):
        report_ratio(f"SA-VAE K={K} training step, {mode} / AVI step: "
                     f"{ratio_summary(times[mode], times['avi']).format(digits=1)} "
                     f"(medians {ms[mode]:.0f} ms vs {ms['avi']:.1f} ms)")
    report_ratio(f"SA-VAE K={K} step time, exact / finite-difference: "
                 f"{ratio_summary(times['savae-exact'], times['savae-fd'])}")
    for mode in MODES:
        report_ratio(f"tensors kept for backward by one training loss, {mode}: {saved_for_backward_mb(mode):.1f} MB")
