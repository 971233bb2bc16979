"""Local q*_FFG optimization (benchmarks/gaps.py): all datapoints of a batch at once vs. the same stopping
rule run one datapoint at a time, time per point (target: batched at least 10x faster). Both paths run the
same number of steps (the rule with ``patience`` out of reach, so ``max_steps`` ends it), so the ratio is
the cost of a step per point. Two regimes on one CPU thread:

* ``linear_gaussian`` (16-d x, 4-d z): a step is a few dozen small kernels, so the single-datapoint path
  pays Python and autograd overhead on every step and batching amortizes it;
* ``mnist_cremer`` (784-200-200-50 Bernoulli MLP, 50 samples per step): one datapoint's step is already a
  5 MFLOP decoder pass forward and backward, compute-bound on one CPU thread, so batching can only gain
  the difference between small and large matrix products there (the gain on a GPU is far larger).

Run with `make bench`; the ratios print at the end."""
from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch

from benchmarks import models
from benchmarks.datasets import DataSplits, LinearGaussianData
from benchmarks.localopt import LocalOptimConfig, optimize_ffg, optimize_ffg_one_at_a_time

from .interleave import interleave, ratio_summary

BATCH, SINGLE_POINTS = 100, 5
CONFIG = LocalOptimConfig(samples=50, check_every=50, patience=10**9, max_steps=100)
CONFIGS = {"linear_gaussian": CONFIG,  # MNIST steps are ~50x dearer: fewer of them give the same ratio
           "mnist_cremer": LocalOptimConfig(samples=50, check_every=5, patience=10**9, max_steps=10)}
#: (rounds, repeats per round) of the interleaved timing: a batched MNIST call is ~1 s on one thread
SCHEDULE = {"linear_gaussian": (7, 2), "mnist_cremer": (5, 1)}


def setup(case: str):
    torch.manual_seed(0)
    if case == "linear_gaussian":
        data = LinearGaussianData().build(Path("unused"))
        return models.build(data, {"fixed_to_truth": True}), data.test[:BATCH].float()
    x = torch.bernoulli(torch.full((BATCH, 784), 0.2))
    data = DataSplits("mnist5k", "image", "bernoulli", x.byte(), x.byte(), x.byte())
    return models.build(data, {"latent_dim": 50, "hidden": [200, 200]}), x


@pytest.mark.benchmark(group="local-qstar")
def test_local_qstar_batched(benchmark):
    model, x = setup("linear_gaussian")
    result = benchmark(lambda: optimize_ffg(model, x, CONFIG))
    assert torch.all(result.steps == CONFIG.max_steps)


@pytest.mark.parametrize("case", ["linear_gaussian", "mnist_cremer"])
def test_batched_vs_one_at_a_time_ratio(measured, report_ratio, case):
    model, x = setup(case)
    config = CONFIGS[case]
    rounds, repeats = SCHEDULE[case]
    times = interleave({"batched": lambda: optimize_ffg(model, x, config),
                        "single": lambda: optimize_ffg_one_at_a_time(model, x[:SINGLE_POINTS], config)},
                       rounds=rounds, repeats=repeats)
    batched = [t / BATCH for t in times["batched"]]  # seconds per point, per round
    single = [t / SINGLE_POINTS for t in times["single"]]
    summary = ratio_summary(single, batched)
    report_ratio(f"local q*_FFG, {case}: one datapoint at a time / batched over {BATCH} points, time per point: "
                 f"{summary.format(digits=1)} (target >= 10); medians "
                 f"{1000 * statistics.median(single):.2f} vs {1000 * statistics.median(batched):.2f} ms/point, "
                 f"{config.max_steps} steps of {config.samples} samples, {torch.get_num_threads()} thread(s)")
