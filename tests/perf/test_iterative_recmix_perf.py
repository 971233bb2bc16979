"""Inference cost of RecMix (M = 1..5 encoders, batched and sequential) and of iterative amortized
inference (T = 1, 5, 20 test-time updates): posterior(x).sample(1) as a ratio to AVI on the same batch and
generative model (the Cremer / IWAE MNIST architecture, 784-200-200-50). Targets: RecMix M = 5 batched at
most 1.5x AVI (reachable where the M encoders' matmuls are not compute-bound, e.g. a GPU; on one CPU
thread they cost about M times one encoder). No timed assertions; ratios print at the end (`make bench`)."""
from __future__ import annotations

import statistics

import pytest
import torch

from methods import build_method

from .conftest import BATCH, LATENT, refining_recmix
from .interleave import interleave, ratio_summary

COMPONENTS = [1, 2, 3, 4, 5]
ITERATIONS = [1, 5, 20]


def _avi_inference(model, x):
    avi = build_method("avi", model).eval()
    return lambda: avi.posterior(x).sample(1)


def _recmix_pair(model, components: int):
    """Batched and sequential RecMix of M components with the same parameters."""
    torch.manual_seed(0)
    batched = refining_recmix(model, components, batched=True)
    sequential = refining_recmix(model, components, batched=False)
    sequential.load_state_dict(batched.state_dict())
    return batched, sequential


def _iterative(model, iterations: int):
    torch.manual_seed(0)
    return build_method("iterative", model, {"test_iterations": iterations}).eval()


@pytest.mark.parametrize("components", COMPONENTS)
@pytest.mark.benchmark(group="recmix-posterior")
def test_recmix_posterior_vs_avi(benchmark, cremer_model_and_batch, components):
    """The benchmark rows (names kept); the ratios to AVI are measured in test_recmix_ratios_to_avi."""
    model, x = cremer_model_and_batch
    batched, _ = _recmix_pair(model, components)

    def infer():
        return batched.posterior(x).sample(1)

    with torch.no_grad():
        z, log_q = infer()
        assert z.shape == (1, BATCH, LATENT) and torch.isfinite(log_q).all()
        assert batched.bank.batched_path == "stacked_mlp"
        benchmark(infer)


def test_recmix_ratios_to_avi(measured, cremer_model_and_batch, report_ratio):
    """Every M, batched and sequential, and AVI interleaved round-robin in one process."""
    model, x = cremer_model_and_batch
    variants = {"avi": _avi_inference(model, x)}
    for m in COMPONENTS:
        batched, sequential = _recmix_pair(model, m)
        variants[f"batched M={m}"] = lambda method=batched: method.posterior(x).sample(1)
        variants[f"sequential M={m}"] = lambda method=sequential: method.posterior(x).sample(1)
    with torch.no_grad():
        times = interleave(variants, rounds=9, repeats=3, min_sample_s=0.01)
    ms = {key: 1e3 * statistics.median(t) for key, t in times.items()}
    for m in COMPONENTS:
        b, s = f"batched M={m}", f"sequential M={m}"
        report_ratio(f"recmix M={m} posterior(x).sample(1) / AVI: batched {ratio_summary(times[b], times['avi'])}"
                     f"{' (target <= 1.5)' if m == 5 else ''}, sequential {ratio_summary(times[s], times['avi'])}; "
                     f"medians {ms[b]:.3f} / {ms[s]:.3f} / AVI {ms['avi']:.3f} ms; batch {BATCH}, "
                     f"784-200-200-{LATENT}, {torch.get_num_threads()} thread(s)")


@pytest.mark.parametrize("iterations", ITERATIONS)
@pytest.mark.benchmark(group="iterative-posterior")
def test_iterative_posterior_vs_avi(benchmark, cremer_model_and_batch, iterations):
    """The benchmark rows (names kept); the ratios to AVI are measured in test_iterative_ratios_to_avi."""
    model, x = cremer_model_and_batch
    method = _iterative(model, iterations)

    def infer():
        return method.posterior(x).sample(1)

    with torch.no_grad():
        z, log_q = infer()
        assert z.shape == (1, BATCH, LATENT) and torch.isfinite(log_q).all()
        benchmark(infer)


def test_iterative_ratios_to_avi(measured, cremer_model_and_batch, report_ratio):
    """T = 1, 5, 20 and AVI interleaved round-robin in one process."""
    model, x = cremer_model_and_batch
    variants = {"avi": _avi_inference(model, x)}
    for t in ITERATIONS:
        variants[f"T={t}"] = lambda method=_iterative(model, t): method.posterior(x).sample(1)
    with torch.no_grad():
        times = interleave(variants, rounds=7, repeats=3, min_sample_s=0.02)
    for t in ITERATIONS:
        key = f"T={t}"
        report_ratio(f"iterative T={t} posterior(x).sample(1) / AVI: {ratio_summary(times[key], times['avi'])}; "
                     f"medians {1e3 * statistics.median(times[key]):.3f} ms vs AVI "
                     f"{1e3 * statistics.median(times['avi']):.3f} ms; batch {BATCH}, 784-200-200-{LATENT}, "
                     f"{torch.get_num_threads()} thread(s)")
