"""Inference cost of RecMix (M = 1..5 encoders, batched and sequential) and of iterative amortized
inference (T = 1, 5, 20 test-time updates): posterior(x).sample(1) as a ratio to AVI on the same batch and
generative model (the Cremer / IWAE MNIST architecture, 784-200-200-50). Targets: RecMix M = 5 batched at
most 1.5x AVI (reachable where the M encoders' matmuls are not compute-bound, e.g. a GPU; on one CPU
thread they cost about M times one encoder). No timed assertions; ratios print at the end (`make bench`)."""
from __future__ import annotations

import pytest
import torch

from methods import build_method

from .conftest import BATCH, LATENT, best_time



def interleaved_best_times(functions: list, rounds: int = 4, repeats: int = 5) -> list[float]:
    """Best wall time of each function, measured in alternating rounds so that load changes on a shared
    machine hit all of them alike (ratios are what is reported)."""
    best = [float("inf")] * len(functions)
    for _ in range(rounds):
        for i, fn in enumerate(functions):
            best[i] = min(best[i], best_time(fn, repeats=repeats, warmup=1))
    return best


def _avi_inference(model, x):
    avi = build_method("avi", model).eval()
    return lambda: avi.posterior(x).sample(1)


def _refining_recmix(model, components: int, batched: bool):
    method = build_method("recmix", model, {"components": components, "batched": batched}).eval()
    method.on_epoch_start(10**6)  # the trained state: all components, all weights set
    method.weights_set = components
    return method


@pytest.mark.parametrize("components", [1, 2, 3, 4, 5])
@pytest.mark.benchmark(group="recmix-posterior")
def test_recmix_posterior_vs_avi(benchmark, cremer_model_and_batch, report_ratio, components):
    model, x = cremer_model_and_batch
    torch.manual_seed(0)
    batched = _refining_recmix(model, components, batched=True)
    sequential = _refining_recmix(model, components, batched=False)
    sequential.load_state_dict(batched.state_dict())

    def infer():
        return batched.posterior(x).sample(1)

    with torch.no_grad():
        z, log_q = infer()
        assert z.shape == (1, BATCH, LATENT) and torch.isfinite(log_q).all()
        assert batched.bank.batched_path == "stacked_mlp"
        benchmark(infer)
        t_batched, t_sequential, t_avi = interleaved_best_times(
            [infer, lambda: sequential.posterior(x).sample(1), _avi_inference(model, x)])
    benchmark.extra_info.update(batched_ms=1e3 * t_batched, sequential_ms=1e3 * t_sequential, avi_ms=1e3 * t_avi,
                                ratio_to_avi=t_batched / t_avi, sequential_ratio_to_avi=t_sequential / t_avi)
    report_ratio(f"recmix M={components} posterior(x).sample(1): batched {1e3 * t_batched:.3f} ms "
                 f"(ratio {t_batched / t_avi:.2f} to AVI {1e3 * t_avi:.3f} ms; target M=5 <= 1.5), sequential "
                 f"{1e3 * t_sequential:.3f} ms (ratio {t_sequential / t_avi:.2f}); batch {BATCH}, "
                 f"784-200-200-{LATENT}, {torch.get_num_threads()} thread(s)")


@pytest.mark.parametrize("iterations", [1, 5, 20])
@pytest.mark.benchmark(group="iterative-posterior")
def test_iterative_posterior_vs_avi(benchmark, cremer_model_and_batch, report_ratio, iterations):
    model, x = cremer_model_and_batch
    torch.manual_seed(0)
    method = build_method("iterative", model, {"test_iterations": iterations}).eval()

    def infer():
        return method.posterior(x).sample(1)

    with torch.no_grad():
        z, log_q = infer()
        assert z.shape == (1, BATCH, LATENT) and torch.isfinite(log_q).all()
        benchmark(infer)
        t_method, t_avi = interleaved_best_times([infer, _avi_inference(model, x)], rounds=3,
                                                 repeats=max(2, 10 // iterations))
    benchmark.extra_info.update(method_ms=1e3 * t_method, avi_ms=1e3 * t_avi, ratio_to_avi=t_method / t_avi)
    report_ratio(f"iterative T={iterations} posterior(x).sample(1): {1e3 * t_method:.3f} ms vs AVI "
                 f"{1e3 * t_avi:.3f} ms: ratio {t_method / t_avi:.2f}; batch {BATCH}, 784-200-200-{LATENT}, "
                 f"{torch.get_num_threads()} thread(s)")
