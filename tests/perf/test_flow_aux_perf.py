"""Inference cost of the richer posteriors: posterior(x).sample(1) of IAF (T = 2, 4, 8) and of the
auxiliary-variable method, each as a ratio to AVI on the same batch and generative model (the Cremer /
IWAE MNIST architecture, 784-200-200-50). No timed assertions; ratios print at the end (`make bench`)."""
from __future__ import annotations

import math

import pytest
import torch

from methods import build_method

from .conftest import BATCH, LATENT, best_time

CASES = [("iaf", {"steps": 2}), ("iaf", {"steps": 4}), ("iaf", {"steps": 8}), ("auxiliary", {})]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{'-'.join(f'{k}{v}' for k, v in o.items()) or 'default'}"
                                                     for n, o in CASES])
@pytest.mark.benchmark(group="flow-aux-posterior")
def test_posterior_sample_vs_avi(benchmark, cremer_model_and_batch, report_ratio, name, options):
    model, x = cremer_model_and_batch
    torch.manual_seed(0)
    method = build_method(name, model, options).eval()
    avi = build_method("avi", model).eval()

    def infer():
        return method.posterior(x).sample(1)

    def infer_avi():
        return avi.posterior(x).sample(1)

    with torch.no_grad():
        z, log_q = infer()
        assert z.shape == (1, BATCH, LATENT) and log_q.shape == (1, BATCH) and torch.isfinite(log_q).all()
        benchmark(infer)
        # alternate the two in short bursts, so that both see the same load on a shared machine
        t_method, t_avi = math.inf, math.inf
        for _ in range(10):
            t_method = min(t_method, best_time(infer, repeats=3, warmup=1))
            t_avi = min(t_avi, best_time(infer_avi, repeats=3, warmup=1))
    ratio = t_method / t_avi
    benchmark.extra_info.update(method_ms=1e3 * t_method, avi_ms=1e3 * t_avi, ratio_to_avi=ratio)
    label = f"{name}({', '.join(f'{k}={v}' for k, v in options.items()) or 'defaults'})"
    report_ratio(f"{label} posterior(x).sample(1): {1e3 * t_method:.3f} ms vs AVI {1e3 * t_avi:.3f} ms per batch "
                 f"of {BATCH} (784-200-200-{LATENT}): ratio {ratio:.2f}; {torch.get_num_threads()} thread(s)")
