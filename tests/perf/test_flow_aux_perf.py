"""Inference cost of the richer posteriors: posterior(x).sample(1) of IAF (T = 2, 4, 8) and of the
auxiliary-variable method, each as a ratio to AVI on the same batch and generative model (the Cremer /
IWAE MNIST architecture, 784-200-200-50). No timed assertions; ratios print at the end (`make bench`)."""
from __future__ import annotations

import statistics

import pytest
import torch

from methods import build_method

from .conftest import BATCH, LATENT
from .interleave import interleave, ratio_summary

CASES = [("iaf", {"steps": 2}), ("iaf", {"steps": 4}), ("iaf", {"steps": 8}), ("auxiliary", {})]


def label(name: str, options: dict) -> str:
    return f"{name}({', '.join(f'{k}={v}' for k, v in options.items()) or 'defaults'})"


def inference(model, x, name: str, options: dict):
    torch.manual_seed(0)
    method = build_method(name, model, options).eval()
    return lambda: method.posterior(x).sample(1)


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{'-'.join(f'{k}{v}' for k, v in o.items()) or 'default'}"
                                                     for n, o in CASES])
@pytest.mark.benchmark(group="flow-aux-posterior")
def test_posterior_sample_vs_avi(benchmark, cremer_model_and_batch, name, options):
    """The benchmark rows (names kept); the ratios to AVI are measured in test_posterior_sample_ratios_to_avi."""
    model, x = cremer_model_and_batch
    infer = inference(model, x, name, options)
    with torch.no_grad():
        z, log_q = infer()
        assert z.shape == (1, BATCH, LATENT) and log_q.shape == (1, BATCH) and torch.isfinite(log_q).all()
        benchmark(infer)


def test_posterior_sample_ratios_to_avi(measured, cremer_model_and_batch, report_ratio):
    """All four methods and AVI interleaved round-robin in one process; each ratio is paired per round."""
    model, x = cremer_model_and_batch
    variants = {label(name, options): inference(model, x, name, options) for name, options in CASES}
    variants["avi"] = inference(model, x, "avi", {})
    with torch.no_grad():  # ~1-2 ms calls: samples of >= 20 ms, so that timer and scheduler noise average out
        times = interleave(variants, rounds=9, repeats=3, min_sample_s=0.02)
    t_avi = statistics.median(times["avi"])
    for key in variants:
        if key == "avi":
            continue
        report_ratio(f"{key} posterior(x).sample(1) / AVI: {ratio_summary(times[key], times['avi'])}; "
                     f"medians {1e3 * statistics.median(times[key]):.3f} ms vs {1e3 * t_avi:.3f} ms per batch of "
                     f"{BATCH} (784-200-200-{LATENT}), {torch.get_num_threads()} thread(s)")
