"""The inference-gap decomposition of a trained method (Cremer, Li & Duvenaud 2018), per datapoint.

    log p(x) - L[q]  =  [log p(x) - L[q*]]  +  [L[q*] - L[q]]
    inference gap       approximation gap      amortization gap

q = q(z|x) is the method's own posterior, q* the best member of a variational family for that one datapoint,
found by local optimization of -L with the noise of ``samples`` reparameterized draws per step.

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

q*_family (``GapConfig.family``, optional): the best member of the method's *own* family, found without
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

Estimates (all by the shared estimator ``benchmarks.estimators.importance_sample``, float64):
* L[q]       the ELBO of the method's posterior with ``elbo_samples`` samples (5000);
* L[q*]      the ELBO of q* with ``eval_samples`` samples (5000 in the paper);
* log p(x)   the largest, in mean over the points, of three stochastic lower bounds: IWAE with the
             method's posterior as proposal (the same ``elbo_samples`` draws), IWAE with q*_FFG as
             proposal (the same ``eval_samples`` draws), and AIS (``benchmarks.ais``, when ``ais`` is
             set); Cremer et al. used the larger of IWAE and AIS. The choice is made once for the whole
             set of points (``log_px_source``), not per point: a per-point maximum of noisy estimates
             would be biased upward by their noise. Every candidate is reported too.
Summaries are means over points with standard errors (std / sqrt(N)).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch
from torch import nn

from methods.base import DiagonalGaussian

from .ais import AISConfig, ais_log_px
from .estimators import chunk_size, elbo, importance_sample

Params = dict[str, torch.Tensor]


class FamilyNotOptimizable(ValueError):
    """The method has no inference parameters, or its posterior is not differentiable in them at test
    time (svi, savae: their family is the diagonal Gaussian, covered by q*_FFG)."""


@dataclass
class LocalOptimConfig:
    lr: float = 1e-3  # Adam step size
    samples: int = 50  # reparameterized samples of the ELBO per step
    check_every: int = 100  # steps per window of the stopping rule
    patience: int = 10  # checks without improvement before a datapoint stops
    max_steps: int = 50_000  # cap on the steps of any datapoint
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8

    def __post_init__(self):
        if min(self.samples, self.check_every, self.patience, self.max_steps) < 1 or self.lr <= 0:
            raise ValueError("lr, samples, check_every, patience and max_steps must be positive")


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
        loss, grads = loss_grad_fn(flat.unpack(current), idx)
        window += loss.detach().double()
        g = flat.pack(grads)
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
    from torch.func import functional_call, grad_and_value, vmap

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
    from torch.func import functional_call

    wrapper = _Estimate(method, samples, chunk)
    estimates = [functional_call(wrapper, {f"method.{k}": t[i] for k, t in params.items()}, (x[i:i + 1],))
                 for i in range(x.shape[0])]
    first = estimates[0]
    fields = {f.name: torch.cat([getattr(e, f.name) for e in estimates])
              for f in dataclasses.fields(first) if f.name != "samples"}
    return type(first)(**fields, samples=first.samples)


# --------------------------------------------------------------------------------------------------
# the decomposition


@dataclass
class GapConfig:
    elbo_samples: int = 5000  # L[q] and IWAE with q as proposal
    eval_samples: int = 5000  # L[q*] and IWAE with q*_FFG as proposal
    local: LocalOptimConfig = field(default_factory=LocalOptimConfig)
    ais: Optional[AISConfig] = field(default_factory=AISConfig)  # None: log p(x) from IWAE only
    family: bool = False  # also q*_family: the method's own family optimized per datapoint
    family_vectorize: Literal["auto", "vmap", "loop"] = "auto"
    family_batch_size: int = 10
    batch_size: int = 100
    max_chunk_elements: int = 1 << 20
    seed: int = 0

    def __post_init__(self):
        if min(self.elbo_samples, self.eval_samples, self.batch_size, self.family_batch_size) < 1:
            raise ValueError("sample counts and batch sizes must be >= 1")


@dataclass
class GapResult:
    """Per-datapoint estimates (float64, shape (N,)) and the config that produced them."""

    per_point: dict[str, torch.Tensor]
    config: GapConfig
    log_px_source: str  # which candidate estimator gave log_px (the largest mean over the points)

    @property
    def n_points(self) -> int:
        return int(next(iter(self.per_point.values())).numel())

    def summary(self) -> dict[str, dict[str, float]]:
        """{name: {"mean": ..., "sem": ...}} over points (sem = std / sqrt(N); 0 for one point)."""
        out = {}
        for name, values in self.per_point.items():
            values = values.double()
            sem = float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else 0.0
            out[name] = {"mean": float(values.mean()), "sem": sem}
        return out

    def to_dict(self, per_point: bool = False) -> dict:
        """A JSON-ready dict (all floats): n_points, q_star (which family the headline gaps use),
        metrics (mean and sem of every per-point quantity), config, and optionally the per-point lists."""
        from .config import to_dict

        payload = {
            "n_points": self.n_points,
            "q_star": "family" if "elbo_qstar_family" in self.per_point else "ffg",
            "log_px_source": self.log_px_source,
            "metrics": self.summary(),
            "config": to_dict(self.config),
        }
        if per_point:
            payload["per_point"] = {k: [float(v) for v in t.tolist()] for k, t in self.per_point.items()}
        return payload


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed the global RNGs inside, restoring the caller's RNG state afterwards."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _batch_gaps(method, x: torch.Tensor, cfg: GapConfig) -> dict[str, torch.Tensor]:
    model = method.model
    elements = model.output_elements()
    chunk_q = chunk_size(cfg.elbo_samples, x.shape[0], elements, cfg.max_chunk_elements)
    chunk_star = chunk_size(cfg.eval_samples, x.shape[0], elements, cfg.max_chunk_elements)
    with torch.no_grad():  # methods that optimize at test time enable gradients inside
        posterior = method.posterior(x)
    own = importance_sample(model, posterior, x, cfg.elbo_samples, chunk_q)
    ffg = optimize_ffg(model, x, cfg.local)
    star = importance_sample(model, ffg.posterior(), x, cfg.eval_samples, chunk_star)
    out = {
        "elbo_q": own.elbo,
        "elbo_qstar_ffg": star.elbo,
        "log_px_iwae_q": own.log_px,
        "log_px_iwae_qstar_ffg": star.log_px,
        "local_steps_ffg": ffg.steps.double(),
        "local_stopped_ffg": ffg.stopped.double(),
    }
    if cfg.ais is not None:
        out["log_px_ais"] = ais_log_px(model, x, cfg.ais).double()
    with torch.no_grad():
        exact = model.exact_log_marginal(x)
    if exact is not None:
        out["exact_log_px"] = exact.double()
    if cfg.family:
        family_elbo, family_steps = [], []
        try:
            for xb in x.split(cfg.family_batch_size):
                fam = optimize_family(method, xb, cfg.local, cfg.family_vectorize)
                chunk_f = chunk_size(cfg.eval_samples, 1, elements, cfg.max_chunk_elements)
                family_elbo.append(family_importance_sample(method, fam.params, xb, cfg.eval_samples, chunk_f).elbo)
                family_steps.append(fam.steps.double())
        except FamilyNotOptimizable as exc:
            warnings.warn(f"no q*_family: {exc}; only the FFG decomposition is reported")
        else:
            out["elbo_qstar_family"] = torch.cat(family_elbo)
            out["local_steps_family"] = torch.cat(family_steps)
    return {k: v.detach().double().cpu() for k, v in out.items()}


LOG_PX_CANDIDATES = ("log_px_iwae_q", "log_px_iwae_qstar_ffg", "log_px_ais")


def _decompose(per_point: dict[str, torch.Tensor]) -> str:
    """Add log_px and the gaps to per_point; return the name of the log p(x) estimator used."""
    candidates = [name for name in LOG_PX_CANDIDATES if name in per_point]
    source = max(candidates, key=lambda name: float(per_point[name].mean()))
    per_point["log_px"] = per_point[source].clone()
    per_point["inference_gap"] = per_point["log_px"] - per_point["elbo_q"]
    per_point["approximation_gap_ffg"] = per_point["log_px"] - per_point["elbo_qstar_ffg"]
    per_point["amortization_gap_ffg"] = per_point["elbo_qstar_ffg"] - per_point["elbo_q"]
    if "elbo_qstar_family" in per_point:
        per_point["approximation_gap_family"] = per_point["log_px"] - per_point["elbo_qstar_family"]
        per_point["amortization_gap_family"] = per_point["elbo_qstar_family"] - per_point["elbo_q"]
    return source


def inference_gaps(method, x: torch.Tensor | list[torch.Tensor], config: GapConfig | None = None) -> GapResult:
    """The decomposition for the points x (a tensor, or a list of minibatches), seeded by config.seed.

    Headline quantities per point: log_px, elbo_q, elbo_qstar_ffg, inference_gap, approximation_gap_ffg,
    amortization_gap_ffg (and *_family with ``config.family``); see the module docstring.
    """
    cfg = config or GapConfig()
    batches = list(x.split(cfg.batch_size)) if isinstance(x, torch.Tensor) else list(x)
    method.eval()
    per_batch = []
    with _seeded(cfg.seed, batches[0].device):
        for xb in batches:
            per_batch.append(_batch_gaps(method, xb, cfg))
    per_point = {k: torch.cat([b[k] for b in per_batch]) for k in per_batch[0]}
    source = _decompose(per_point)
    return GapResult(per_point, cfg, source)


def split_points(data, split: str, n_points: int | None, batch_size: int, device, seed: int = 0) -> list:
    """The first `n_points` points of a split as model-ready minibatches (dynamic binarization of the
    train split drawn with a fixed seed, so the points are the same on every run)."""
    generator = torch.Generator().manual_seed(seed)
    return list(data.batches(split, batch_size, generator=generator, device=device, limit=n_points))


def run_gaps(model_file, data, config: GapConfig, device, splits: dict[str, Optional[int]] | None = None,
             per_point: bool = False) -> dict:
    """The gaps.json payload of one trained cell: for each split (default: the first 1000 train points
    and all test points, the reference protocol) the ``GapResult.to_dict`` of ``inference_gaps``."""
    from . import provenance

    from .evaluate import load_trained

    device = torch.device(device)
    method, saved = load_trained(model_file, data, device)
    cell = saved["cell"]
    splits = {"train": 1000, "test": None} if splits is None else splits
    results = {}
    for split, n_points in splits.items():
        points = split_points(data, split, n_points, config.batch_size, device, config.seed)
        results[split] = inference_gaps(method, points, config).to_dict(per_point)
    return {
        "dataset": cell["dataset"],
        "method": cell["method"],
        "seed": cell["seed"],
        "splits": results,
        "provenance": provenance.record(device, cell["seed"], saved["cell_hash"]),
    }
