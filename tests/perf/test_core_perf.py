"""Core harness perf: AVI inference per batch, and IS-NLL throughput against a bare torch.mm of the
decoder's shapes (target: at least half of it). Run with `make bench`; ratios print at the end."""
from __future__ import annotations

import statistics

import pytest
import torch

from benchmarks.estimators import chunk_size, importance_sample
from benchmarks.evaluate import EvalConfig
from methods import build_method

from .conftest import BATCH, LATENT
from .interleave import interleave, ratio_summary

SAMPLES = 1000


@pytest.fixture(scope="module")
def cremer_setup(cremer_model_and_batch):
    """AVI on the Cremer / IWAE MNIST architecture and a batch of binary inputs."""
    model, x = cremer_model_and_batch
    return build_method("avi", model).eval(), x


def is_and_bare_mm(method, x):
    """IS-NLL of SAMPLES samples per point, and the decoder's three matmuls for the same samples in the
    same chunks; with the number of samples x points each one processes."""
    model = method.model
    with torch.no_grad():
        posterior = method.posterior(x)
    chunk = chunk_size(SAMPLES, BATCH, model.output_elements(), EvalConfig().max_chunk_elements)

    def is_nll():
        return importance_sample(model, posterior, x, SAMPLES, chunk)

    weights = [layer.weight.T.contiguous() for layer in model.decoder if isinstance(layer, torch.nn.Linear)]
    z = torch.randn(chunk * BATCH, LATENT)

    def bare_mm():
        for _ in range(SAMPLES // chunk):
            h = z
            for w in weights:
                h = torch.mm(h, w)
        return h

    return chunk, (is_nll, SAMPLES * BATCH), (bare_mm, (SAMPLES // chunk) * chunk * BATCH)


@pytest.mark.benchmark(group="avi-posterior")
def test_avi_posterior_batch(benchmark, cremer_setup):
    method, x = cremer_setup
    with torch.no_grad():
        benchmark(lambda: method.posterior(x).sample(1))


@pytest.mark.benchmark(group="is-throughput")
def test_is_nll_throughput_vs_bare_matmul(benchmark, cremer_setup):
    """The benchmark row (its name kept); the ratio to the bare matmuls is test_is_nll_vs_bare_matmul_ratio."""
    method, x = cremer_setup
    _, (is_nll, _), _ = is_and_bare_mm(method, x)
    with torch.no_grad():
        benchmark(is_nll)


def test_is_nll_vs_bare_matmul_ratio(measured, cremer_setup, report_ratio):
    method, x = cremer_setup
    chunk, (is_nll, is_work), (bare_mm, mm_work) = is_and_bare_mm(method, x)
    with torch.no_grad():  # an IS call is ~1 s on one thread: few, long rounds
        times = interleave({"is": is_nll, "mm": bare_mm}, rounds=5, repeats=1)
    is_rates = [is_work / t for t in times["is"]]
    mm_rates = [mm_work / t for t in times["mm"]]
    summary = ratio_summary(is_rates, mm_rates)
    report_ratio(f"IS-NLL {statistics.median(is_rates):,.0f} samples/s vs bare torch.mm of the decoder "
                 f"{statistics.median(mm_rates):,.0f} samples/s (medians over rounds): throughput {summary} "
                 f"(target >= 0.5); chunk {chunk} samples x batch {BATCH}, {torch.get_num_threads()} thread(s)")
