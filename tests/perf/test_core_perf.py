"""Core harness perf: AVI inference per batch, and IS-NLL throughput against a bare torch.mm of the
decoder's shapes (target: at least half of it). Run with `make bench`; ratios print at the end."""
from __future__ import annotations

import pytest
import torch

from benchmarks.estimators import chunk_size, importance_sample
from benchmarks.evaluate import EvalConfig
from methods import build_method

from .conftest import BATCH, LATENT, best_time

SAMPLES = 1000


@pytest.fixture(scope="module")
def cremer_setup(cremer_model_and_batch):
    """AVI on the Cremer / IWAE MNIST architecture and a batch of binary inputs."""
    model, x = cremer_model_and_batch
    return build_method("avi", model).eval(), x


@pytest.mark.benchmark(group="avi-posterior")
def test_avi_posterior_batch(benchmark, cremer_setup):
    method, x = cremer_setup
    with torch.no_grad():
        benchmark(lambda: method.posterior(x).sample(1))


@pytest.mark.benchmark(group="is-throughput")
def test_is_nll_throughput_vs_bare_matmul(benchmark, cremer_setup, report_ratio):
    method, x = cremer_setup
    model = method.model
    with torch.no_grad():
        posterior = method.posterior(x)
    chunk = chunk_size(SAMPLES, BATCH, model.output_elements(), EvalConfig().max_chunk_elements)

    def is_nll():
        return importance_sample(model, posterior, x, SAMPLES, chunk)

    weights = [layer.weight.T.contiguous() for layer in model.decoder if isinstance(layer, torch.nn.Linear)]
    z = torch.randn(chunk * BATCH, LATENT)

    def bare_mm():  # the decoder's three matmuls for the same samples, in the same chunks
        for _ in range(SAMPLES // chunk):
            h = z
            for w in weights:
                h = torch.mm(h, w)
        return h

    with torch.no_grad():
        benchmark(is_nll)
        t_is = best_time(is_nll, repeats=3)
        t_mm = best_time(bare_mm, repeats=3)
    is_rate, mm_rate = SAMPLES * BATCH / t_is, (SAMPLES // chunk) * chunk * BATCH / t_mm
    benchmark.extra_info.update(is_samples_per_s=is_rate, mm_samples_per_s=mm_rate, ratio=is_rate / mm_rate)
    report_ratio(f"IS-NLL {is_rate:,.0f} samples/s vs bare torch.mm of the decoder {mm_rate:,.0f} samples/s: "
                 f"ratio {is_rate / mm_rate:.2f} (target >= 0.5); chunk {chunk} samples x batch {BATCH}, "
                 f"{torch.get_num_threads()} thread(s)")
