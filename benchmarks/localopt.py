"""Local (per-datapoint) optimization of a variational family: q* of the inference-gap decomposition.

q* is the best member of a variational family for one datapoint, found by local optimization of -L
(the ELBO) with the noise of ``samples`` reparameterized draws per step.

q*_FFG (always): a diagonal Gaussian lambda = (mu, log sigma^2) per datapoint from a fresh start (0, 0) (the
prior), optimized by Adam (lr 1e-3, 50 samples per step: the reference protocol of PROTOCOLS.md).
Stopping rule (the reference code's), per datapoint: every ``check_every`` (100) steps the average loss
over those steps is compared with the best so far; a datapoint stops after ``patience`` (10) checks in a
row without improvement, or at ``max_steps``. The start is scored first by the same measure (the mean of
``check_every`` evaluations of the loss at lambda_0), and the parameters returned are those at the end of
the best-scoring window, or the start itself if no window beat it: the result is never worse than the
start by the rule's own measure. All datapoints of a batch are optimized at once, each with its own lambda
and its own Adam moments (Adam is elementwise, so this equals separate runs with the same noise); a
datapoint that stops is frozen (its rows are no longer computed) while the others go on.
``optimize_ffg_one_at_a_time`` runs the same rule one datapoint at a time (the reference for tests and
the perf comparison).

q*_family (optional in the gaps stage: ``gaps.family``): the best member of the method's *own* family, found without
anything method-specific: every inference-side parameter of the method (``inference_parameters()``) is
copied once per datapoint and the copies are optimized per datapoint under the same rule, starting from
the trained values (so the start is q itself and L[q*_family] >= L[q] by the rule's measure; a fresh
random encoder would be an arbitrary start). For an encoder whose last layer is affine this reaches
every output the head can produce, i.e. the whole family (for AVI: every diagonal Gaussian, so q*_family
= q*_FFG). Vectorized by ``torch.func``: ``vmap`` over ``grad`` of ``functional_call`` of
``-elbo(posterior(x).sample)``, ``randomness="different"``. Methods whose posterior cannot be vmapped
(test-time ``autograd.grad`` inside, LSTM encoders, ``torch.multinomial``) fall back to a loop over
datapoints (``family_vectorize: auto``; ``loop`` forces it); of the shipped methods avi, iaf, auxiliary
and recmix vmap, iterative (``autograd.grad`` inside its posterior) falls back. svi (no inference
parameters) and savae (test-time refinement detached from the encoder) have no q*_family: their family
is the diagonal Gaussian, so q*_FFG is their q* (``FamilyNotOptimizable``; the family keys are then
omitted with a warning). Memory: B copies of the inference parameters and of their two Adam moments,
so keep ``family_batch_size`` small for large encoders.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from methods.base import DiagonalGaussian

from .estimators import elbo, importance_sample
from .options import Options

Params = dict[str, torch.Tensor]


class FamilyNotOptimizable(ValueError):
    """The method has no inference parameters, or its posterior is not differentiable in them at test
    time (svi, savae: their family is the diagonal Gaussian, covered by q*_FFG)."""


class LocalOptimConfig(Options):
    lr: float = Field(1e-3, gt=0)  # Adam step size
    samples: int = Field(50, ge=1)  # reparameterized samples of the ELBO per step
    check_every: int = Field(100, ge=1)  # steps per window of the stopping rule
    patience: int = Field(10, ge=1)  # checks without improvement before a datapoint stops
    max_steps: int = Field(50_000, ge=1)  # cap on the steps of any datapoint
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0)


@dataclass
class LocalOptimResult:
    """Per-datapoint outcome of a local optimization; tensors have a leading datapoint dimension B."""

    params: Params  # the best parameters seen (the start if no window beat it)
    final: Params  # the last iterate
    steps: torch.Tensor  # (B,) steps taken
    checks: torch.Tensor  # (B,) checks made
    best_check: torch.Tensor  # (B,) check at which the best window ended (0: the start)
    stopped: torch.Tensor  # (B,) bool: stopped by the rule (False: by max_steps)
    start_loss: torch.Tensor  # (B,) float64: score of the start (mean loss over check_every evaluations)
    best_loss: torch.Tensor  # (B,) float64: score of `params` (<= start_loss)

    def posterior(self) -> DiagonalGaussian:
        """q*_FFG as a Posterior (for results of the FFG optimizer)."""
        return DiagonalGaussian(self.params["mu"], self.params["logvar"])

    @staticmethod
    def cat(results: list["LocalOptimResult"]) -> "LocalOptimResult":
        def cat_dicts(name):
            return {k: torch.cat([getattr(r, name)[k] for r in results]) for k in getattr(results[0], name)}

        return LocalOptimResult(
            cat_dicts("params"), cat_dicts("final"),
            *(torch.cat([getattr(r, f.name) for r in results])
              for f in dataclasses.fields(LocalOptimResult) if f.name not in ("params", "final")))


LossFn = Callable[[Params, Optional[torch.Tensor]], torch.Tensor]
LossGradFn = Callable[[Params, Optional[torch.Tensor]], tuple[torch.Tensor, Params]]


class _Flat:
    """Packs a dict of per-datapoint tensors (B, ...) into one (B, P) tensor and back (views)."""

    def __init__(self, params: Params):
        self.names = list(params)
        self.shapes = [tuple(params[k].shape[1:]) for k in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]

    def pack(self, params: Params) -> torch.Tensor:
        return torch.cat([params[k].reshape(params[k].shape[0], -1) for k in self.names], 1)

    def unpack(self, flat: torch.Tensor) -> Params:
        parts = flat.split(self.sizes, dim=1)
        return {k: t.reshape(flat.shape[0], *s) for k, t, s in zip(self.names, parts, self.shapes)}


def local_optimize(params: Params, loss_fn: LossFn, loss_grad_fn: LossGradFn,
                   config: LocalOptimConfig) -> LocalOptimResult:
    """Minimize a per-datapoint loss over per-datapoint parameters under the stopping rule (module doc).

    ``params``: tensors with a leading datapoint dimension B. ``loss_fn(p, idx)`` returns the loss of each
    datapoint in ``idx`` (None: all, in order) for parameters ``p`` of those datapoints, shape (b,);
    ``loss_grad_fn`` also returns the gradients of each datapoint's loss w.r.t. its own parameters.
    Adam (as torch.optim.Adam) per element. Only datapoints still running are computed: their parameters
    and Adam moments are kept compacted and written back when a datapoint stops.
    """
    cfg = config
    flat = _Flat(params)
    theta = flat.pack({k: v.detach() for k, v in params.items()}).clone()  # (B, P), all datapoints
    batch, device = theta.shape[0], theta.device
    with torch.no_grad():
        start = sum(loss_fn(flat.unpack(theta), None).detach().double()
                    for _ in range(cfg.check_every)) / cfg.check_every
    best_loss, best = start.clone(), theta.clone()
    long = dict(dtype=torch.long, device=device)
    steps, checks, best_check, bad = (torch.zeros(batch, **long) for _ in range(4))
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)
    active = torch.arange(batch, device=device)
    idx: Optional[torch.Tensor] = None  # None while every datapoint is running
    # compacted state of the running datapoints
    current, exp_avg, exp_avg_sq = theta.clone(), torch.zeros_like(theta), torch.zeros_like(theta)
    window = torch.zeros(batch, dtype=torch.float64, device=device)
    beta1, beta2 = cfg.adam_betas
    step, last_check = 0, 0
    while active.numel() > 0 and step < cfg.max_steps:
        step += 1
        with torch.no_grad():  # the gradient is data here: no graph may link one step to the next (torch.func
            loss, grads = loss_grad_fn(flat.unpack(current), idx)  # transforms ignore this no_grad, as they should)
        window += loss.detach().double()
        g = flat.pack(grads).detach()
        exp_avg.mul_(beta1).add_(g, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (exp_avg_sq / (1.0 - beta2**step)).sqrt_().add_(cfg.adam_eps)
        current = current.addcdiv(exp_avg, denom, value=-cfg.lr / (1.0 - beta1**step))
        if step % cfg.check_every and step < cfg.max_steps:
            continue
        # a check for every running datapoint: the window's average loss against the best score
        average = window / (step - last_check)
        improved = average < best_loss.index_select(0, active)
        winners = active[improved]
        best_loss.index_copy_(0, winners, average[improved])
        best.index_copy_(0, winners, current[improved])
        checks.index_add_(0, active, torch.ones_like(active))
        best_check.index_copy_(0, winners, checks.index_select(0, winners))
        bad.index_copy_(0, active, torch.where(improved, 0, bad.index_select(0, active) + 1))
        steps.index_fill_(0, active, step)
        window.zero_()
        last_check = step
        done = bad.index_select(0, active) >= cfg.patience
        if bool(done.any()):
            stopped.index_fill_(0, active[done], True)
            theta.index_copy_(0, active[done], current[done])
            keep = ~done
            active, current, exp_avg, exp_avg_sq = active[keep], current[keep], exp_avg[keep], exp_avg_sq[keep]
            window = window[keep]
            idx = active
    theta.index_copy_(0, active, current)
    return LocalOptimResult(flat.unpack(best), flat.unpack(theta), steps, checks, best_check, stopped,
                            start, best_loss)


# --------------------------------------------------------------------------------------------------
# q*_FFG: a diagonal Gaussian per datapoint


def _ffg_losses(model, x: torch.Tensor, samples: int) -> tuple[LossFn, LossGradFn]:
    """-ELBO of N(mu, diag exp(logvar)) per datapoint (the shared estimator), and its gradient."""

    cache: dict = {}

    def subset(idx):
        if idx is None:
            return x
        if cache.get("idx") is not idx:
            cache.update(idx=idx, x=x.index_select(0, idx))
        return cache["x"]

    def loss_fn(p: Params, idx):
        return -elbo(model, DiagonalGaussian(p["mu"], p["logvar"]), subset(idx), samples)

    def loss_grad_fn(p: Params, idx):
        with torch.enable_grad():
            leaves = {k: t.detach().requires_grad_(True) for k, t in p.items()}
            loss = loss_fn(leaves, idx)
            grads = torch.autograd.grad(loss.sum(), (leaves["mu"], leaves["logvar"]))
        return loss.detach(), {"mu": grads[0], "logvar": grads[1]}

    return loss_fn, loss_grad_fn


def optimize_ffg(model, x: torch.Tensor, config: LocalOptimConfig | None = None,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None) -> LocalOptimResult:
    """q*_FFG for every datapoint of x at once (module docstring). ``init``: (mu, logvar) of shape (B, D);
    default the fresh start (0, 0). Noise from the global torch RNG; ``result.posterior()`` is q*."""
    config = config or LocalOptimConfig()
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    shape = (x.shape[0], model.latent_dim)
    if init is None:
        init = (torch.zeros(shape, dtype=dtype, device=x.device), torch.zeros(shape, dtype=dtype, device=x.device))
    loss_fn, loss_grad_fn = _ffg_losses(model, x, config.samples)
    return local_optimize({"mu": init[0], "logvar": init[1]}, loss_fn, loss_grad_fn, config)


def optimize_ffg_one_at_a_time(model, x: torch.Tensor, config: LocalOptimConfig | None = None,
                               init: tuple[torch.Tensor, torch.Tensor] | None = None) -> LocalOptimResult:
    """The same rule as ``optimize_ffg``, run separately for each datapoint (the reference path)."""
    return LocalOptimResult.cat([
        optimize_ffg(model, x[i:i + 1], config, None if init is None else (init[0][i:i + 1], init[1][i:i + 1]))
        for i in range(x.shape[0])])


# --------------------------------------------------------------------------------------------------
# q*_family: the method's own family, by per-datapoint copies of its inference parameters


class _NegativeELBO(nn.Module):
    """x -> -ELBO of method.posterior(x) with `samples` draws, per datapoint (for functional_call)."""

    def __init__(self, method, samples: int):
        super().__init__()
        self.method, self.samples = method, samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -elbo(self.method.model, self.method.posterior(x), x, self.samples)


def _family_losses(method, x: torch.Tensor, samples: int, vectorize: str) -> tuple[LossFn, LossGradFn]:
    wrapper = _NegativeELBO(method, samples)

    def one(p: Params, x_one: torch.Tensor) -> torch.Tensor:
        named = {f"method.{k}": t for k, t in p.items()}
        return functional_call(wrapper, named, (x_one.unsqueeze(0),)).squeeze(0)

    mapped_loss = vmap(one, randomness="different")
    mapped_grad = vmap(grad_and_value(one), randomness="different")

    def loop_loss(p, xb):
        return torch.stack([one({k: t[i] for k, t in p.items()}, xb[i]) for i in range(xb.shape[0])])

    def loop_grad(p, xb):
        losses, grads = [], {k: [] for k in p}
        for i in range(xb.shape[0]):
            with torch.enable_grad():
                leaves = {k: t[i].detach().requires_grad_(True) for k, t in p.items()}
                loss = one(leaves, xb[i])
                if not loss.requires_grad:
                    raise FamilyNotOptimizable(f"the posterior of {type(method).__name__} is not differentiable "
                                               "in its inference parameters at test time")
                gs = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            losses.append(loss.detach())
            for (k, leaf), g in zip(leaves.items(), gs):
                grads[k].append(torch.zeros_like(leaf) if g is None else g)
        return torch.stack(losses), {k: torch.stack(g) for k, g in grads.items()}

    mode = {"vectorize": vectorize}  # "auto" until the first vmapped gradient succeeds (then "vmap")

    def dispatch(vmapped, looped, commits: bool):
        def call(p: Params, idx):
            xb = x if idx is None else x.index_select(0, idx)
            if mode["vectorize"] != "loop":
                try:
                    out = vmapped(p, xb)
                except Exception as exc:  # noqa: BLE001 - any failure of vmap on this posterior
                    if mode["vectorize"] == "vmap":
                        raise
                    warnings.warn(f"{type(method).__name__}: posterior cannot be vmapped "
                                  f"({type(exc).__name__}: {exc}); optimizing one datapoint at a time")
                    mode["vectorize"] = "loop"
                else:
                    if commits:
                        mode["vectorize"] = "vmap"
                    return out
            return looped(p, xb)

        return call

    def grad_call(p, xb):
        grads, loss = mapped_grad(p, xb)
        return loss.detach(), grads

    return dispatch(mapped_loss, loop_loss, False), dispatch(grad_call, loop_grad, True)


def optimize_family(method, x: torch.Tensor, config: LocalOptimConfig | None = None,
                    vectorize: Literal["auto", "vmap", "loop"] = "auto") -> LocalOptimResult:
    """q*_family per datapoint: the method's inference parameters, one copy per datapoint, optimized
    under the stopping rule from their trained values. ``result.params`` holds the per-datapoint copies
    (names as in ``method.named_parameters()``); evaluate with ``family_importance_sample``."""
    config = config or LocalOptimConfig()
    inference = {id(p) for p in method.inference_parameters()}
    start = {name: p.detach().unsqueeze(0).expand(x.shape[0], *p.shape).clone()
             for name, p in method.named_parameters() if id(p) in inference}
    if not start:
        raise FamilyNotOptimizable(f"{type(method).__name__} has no inference parameters to optimize per datapoint")
    loss_fn, loss_grad_fn = _family_losses(method, x, config.samples, vectorize)
    return local_optimize(start, loss_fn, loss_grad_fn, config)


class _Estimate(nn.Module):
    """x -> the shared estimator on method.posterior(x) (for functional_call with swapped parameters)."""

    def __init__(self, method, samples: int, chunk: int | None):
        super().__init__()
        self.method, self.samples, self.chunk = method, samples, chunk

    def forward(self, x: torch.Tensor):
        with torch.no_grad():
            posterior = self.method.posterior(x)
        return importance_sample(self.method.model, posterior, x, self.samples, self.chunk)


def family_importance_sample(method, params: Params, x: torch.Tensor, samples: int, chunk: int | None = None):
    """The shared estimator for datapoint i under its own parameter copy params[name][i] (one at a time)."""
    wrapper = _Estimate(method, samples, chunk)
    estimates = [functional_call(wrapper, {f"method.{k}": t[i] for k, t in params.items()}, (x[i:i + 1],))
                 for i in range(x.shape[0])]
    first = estimates[0]
    fields = {f.name: torch.cat([getattr(e, f.name) for e in estimates])
              for f in dataclasses.fields(first) if f.name != "samples"}
    return type(first)(**fields, samples=first.samples)
