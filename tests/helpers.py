"""Small helpers shared by tests (not fixtures)."""
from __future__ import annotations

import re

import torch

from methods.base import Step


def fit(method, data, steps: int = 200, lr: float = 1e-2, batch_size: int = 100, seed: int = 0) -> list[float]:
    """A few hundred Adam steps of the method's own loss on the train split; returns the losses."""
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:  # e.g. SVI on a fixed generator: nothing to train
        return []
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses, step = [], 0
    while step < steps:
        method.on_epoch_start(step // max(1, data.train.shape[0] // batch_size))
        for x in data.batches("train", batch_size, shuffle=True, generator=generator):
            loss = method.loss(x, Step(iteration=step))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if step >= steps:
                break
    return losses


def directional_derivative_check(loss_fn, params: list[torch.Tensor], directions: int = 4, eps: float = 1e-6,
                                 seed: int = 0) -> list[tuple[float, float]]:
    """Compare the autograd gradient of `loss_fn()` along random directions with central differences.

    `loss_fn` must be deterministic (reset the RNG inside it). Returns (autograd, finite difference)
    pairs, one per direction; parameters are restored afterwards.
    """
    grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(directions):
        vs = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
        analytic = sum(float((g * v).sum()) for g, v in zip(grads, vs))
        with torch.no_grad():
            for p, v in zip(params, vs):
                p.add_(eps * v)
            plus = float(loss_fn())
            for p, v in zip(params, vs):
                p.sub_(2 * eps * v)
            minus = float(loss_fn())
            for p, v in zip(params, vs):
                p.add_(eps * v)
        pairs.append((analytic, (plus - minus) / (2 * eps)))
    return pairs


def assert_bounds_converge_to_exact(model, posterior, x: torch.Tensor, largest_samples: int) -> None:
    """The ELBO lies below the exact log p(x), and the IWAE-S bound climbs towards it as S grows.

    A wrong log q (a missing log-determinant, a + log r where − belongs) converges elsewhere.
    """
    from benchmarks.estimators import elbo, importance_sample

    exact = float(model.exact_log_marginal(x).double().mean())
    with torch.no_grad():
        assert float(elbo(model, posterior, x, 1000).double().mean()) < exact
        errors = {S: float(importance_sample(model, posterior, x, S, chunk=1000).log_px.mean()) - exact
                  for S in (1, 10, largest_samples)}
    assert errors[1] < -0.03, errors
    assert abs(errors[1]) > abs(errors[10]) > abs(errors[largest_samples]), errors
    assert abs(errors[largest_samples]) < 0.01, errors


def planned_resources(dry_run_stdout: str) -> dict[str, list[dict]]:
    """rule -> the resources of each of its planned jobs, read from the output of `snakemake -n`."""
    requests: dict[str, list[dict]] = {}
    rule = None
    for line in dry_run_stdout.splitlines():
        if match := re.fullmatch(r"\s*(?:local)?rule (\w+):", line):
            rule = match.group(1)
        elif (match := re.fullmatch(r"\s*resources: (.*)", line)) and rule is not None:
            requests.setdefault(rule, []).append(dict(item.split("=", 1) for item in match.group(1).split(", ")))
            rule = None
    return requests
