"""Stochastic VI refinement of Gaussian parameters lambda = (mu, log sigma^2), shared by svi and savae.

Objective per datapoint (one reparameterized sample eps_k per step, KL to N(0, I) in closed form):

    f(lambda; x, theta) = -log p_theta(x | mu + sigma * eps_k) + beta * KL(N(mu, sigma^2) || N(0, I))

K steps of SGD with momentum (SA-VAE, Kim et al. 2018, Algorithm 1 and its reference code):

    g_k = clip(grad_lambda f(lambda_k)),   v_{k+1} = momentum * v_k - g_k,   lambda_{k+1} = lambda_k + lr * v_{k+1}

``step_scaling``: "per_example" differentiates sum_b f_b, so each datapoint takes its own step and the
batch size does not matter (the default); "batch_mean" differentiates mean_b f_b as the reference code
does, which scales every step by 1/B. Clipping rescales the gradient of mu and of log sigma^2 to norm
at most ``grad_clip``, per datapoint ("per_example") or over the whole batch ("batch_mean", as the
reference code).

Gradients through the K steps (SA-VAE):
* ``exact``: the steps are built with ``create_graph=True`` and autograd differentiates through them
  (double backward: Hessian-vector products H_ll v and H_thl v, exactly).
* ``finite_difference``: Algorithm 1 of the paper. The forward pass keeps lambda_k, g_k and the noise;
  the backward pass runs the momentum recursion in reverse and forms each Hessian-vector product by a
  central difference of the gradient, [grad f(lambda_k + r u) - grad f(lambda_k - r u)] / 2r with the
  same noise replayed, where u = J_clip(g_k)^T w is the adjoint pushed through the clipping.

cuDNN and recurrent models: cuDNN's RNN kernels support neither double backward (pytorch#5261,
#25315: "derivative for _cudnn_rnn_backward is not implemented") nor backward in eval mode, so every
refinement through a recurrent model on CUDA (training and test time, exact and finite-difference,
forward and backward passes) runs with cuDNN off: ``cudnn_disabled(needs_cudnn_off(model, x))``. The
native kernels it then takes are double-differentiable. The guard lives here, below benchmarks.runtime
in the layers (methods cannot import runtime), and runtime re-exports it for the stages.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal, Optional, Union

import torch
from pydantic import Field

from benchmarks.options import Options


# --------------------------------------------------------------------------------------------------
# the cuDNN guard for recurrent models (re-exported by benchmarks.runtime)


def on_cuda(where: Union[torch.Tensor, torch.device, str]) -> bool:
    """Whether a tensor (or a device) is on CUDA. The one device check of the guard: CPU tests patch it."""
    device = where.device if isinstance(where, torch.Tensor) else torch.device(where)
    return device.type == "cuda"


def needs_cudnn_off(model, where: Union[torch.Tensor, torch.device, str]) -> bool:
    """True when gradients through `model` at `where` (the data tensor, or a device) would run cuDNN's
    RNN kernels: the device is CUDA and the model has recurrent modules (``GenerativeModel.recurrent``)."""
    return on_cuda(where) and bool(model.recurrent)


@contextlib.contextmanager
def cudnn_disabled(enabled: bool = True) -> Iterator[None]:
    """cuDNN off inside (when `enabled`), restored afterwards even on an exception."""
    if not enabled:
        yield
        return
    previous = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = previous


# --------------------------------------------------------------------------------------------------
# SVI refinement


class SVIOptions(Options):
    """Options shared by every method that refines lambda by SVI (defaults: the SA-VAE code)."""

    steps: int = Field(20, ge=0)  # K during training
    test_steps: Optional[int] = Field(None, ge=0)  # K at test time (default: steps)
    lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.5, ge=0, le=1)
    grad_clip: float = Field(5.0, gt=0)
    step_scaling: Literal["per_example", "batch_mean"] = "per_example"
    train_samples: int = Field(1, ge=1)  # samples of the outer ELBO at lambda_K

    @property
    def inference_steps(self) -> int:
        return self.steps if self.test_steps is None else self.test_steps


def svi_objective(model, x, mu, logvar, eps, kl_weight: float) -> torch.Tensor:
    """f(lambda) per datapoint, shape (B,): -log p(x|z) + beta * KL(q || N(0, I)), z = mu + sigma*eps."""
    z = mu + torch.exp(0.5 * logvar) * eps
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
    return -model.log_likelihood(x, z.unsqueeze(0)).squeeze(0) + kl_weight * kl


def clip_rows(g: torch.Tensor, max_norm: float, per_example: bool) -> torch.Tensor:
    """g * min(1, max_norm / ||g||): per row, or over the whole tensor. Differentiable."""
    norm = g.norm(dim=-1, keepdim=True) if per_example else g.norm()
    return g * torch.clamp(max_norm / (norm + 1e-12), max=1.0)


def _total(values: torch.Tensor, opts: SVIOptions) -> torch.Tensor:
    return values.sum() if opts.step_scaling == "per_example" else values.mean()


def _clipped_gradient(model, x, mu, logvar, eps, kl_weight, opts, create_graph, params=()):
    f = _total(svi_objective(model, x, mu, logvar, eps, kl_weight), opts)
    grads = torch.autograd.grad(f, (mu, logvar, *params), create_graph=create_graph, allow_unused=True)
    per_example = opts.step_scaling == "per_example"
    g_mu = clip_rows(grads[0], opts.grad_clip, per_example)
    g_lv = clip_rows(grads[1], opts.grad_clip, per_example)
    return g_mu, g_lv, grads[2:]


def refine(model, x, mu, logvar, opts: SVIOptions, steps: int, kl_weight: float = 1.0,
           create_graph: bool = False):
    """lambda_K from lambda_0 = (mu, logvar). With create_graph, lambda_K stays a differentiable
    function of lambda_0 and theta (exact mode); otherwise the result is detached. Through a recurrent
    model on CUDA the steps run with cuDNN off (module docstring), so the graph holds native kernels."""
    with torch.enable_grad(), cudnn_disabled(needs_cudnn_off(model, x)):
        if not (create_graph and mu.requires_grad and logvar.requires_grad):
            mu, logvar = mu.detach().requires_grad_(True), logvar.detach().requires_grad_(True)
        v_mu, v_lv = torch.zeros_like(mu), torch.zeros_like(logvar)
        for _ in range(steps):
            eps = torch.randn_like(mu)
            g_mu, g_lv, _ = _clipped_gradient(model, x, mu, logvar, eps, kl_weight, opts, create_graph)
            v_mu = opts.momentum * v_mu - g_mu
            v_lv = opts.momentum * v_lv - g_lv
            mu = mu + opts.lr * v_mu
            logvar = logvar + opts.lr * v_lv
            if not create_graph:
                mu, logvar = mu.detach().requires_grad_(True), logvar.detach().requires_grad_(True)
    if not create_graph:
        return mu.detach(), logvar.detach()
    return mu, logvar


class _FiniteDifferenceRefinement(torch.autograd.Function):
    """lambda_K = refine(lambda_0; theta) with the backward pass of SA-VAE's Algorithm 1."""

    @staticmethod
    def forward(ctx, mu0, logvar0, model, x, opts, steps, kl_weight, fd_step, *params):
        ctx.model, ctx.opts, ctx.kl_weight, ctx.fd_step = model, opts, kl_weight, fd_step
        ctx.params = params
        trajectory = []
        mu, logvar = mu0.detach(), logvar0.detach()
        v_mu, v_lv = torch.zeros_like(mu), torch.zeros_like(logvar)
        with torch.enable_grad(), cudnn_disabled(needs_cudnn_off(model, x)):
            for _ in range(steps):
                eps = torch.randn_like(mu)
                mu_k, lv_k = mu.requires_grad_(True), logvar.requires_grad_(True)
                g_mu, g_lv, _ = _clipped_gradient(model, x, mu_k, lv_k, eps, kl_weight, opts, False)
                trajectory.append((mu_k.detach(), lv_k.detach(), eps))
                v_mu = opts.momentum * v_mu - g_mu.detach()
                v_lv = opts.momentum * v_lv - g_lv.detach()
                mu = mu_k.detach() + opts.lr * v_mu
                logvar = lv_k.detach() + opts.lr * v_lv
        # saved through autograd (so memory accounting and hooks see them): x and (lambda_k, eps_k) per step
        ctx.save_for_backward(x, *[t for step_k in trajectory for t in step_k])
        return mu.clone(), logvar.clone()

    @staticmethod
    def backward(ctx, grad_mu, grad_lv):
        model, opts, params, r = ctx.model, ctx.opts, ctx.params, ctx.fd_step
        x, *flat = ctx.saved_tensors
        trajectory = [flat[i : i + 3] for i in range(0, len(flat), 3)]
        lam_bar = [grad_mu.clone(), grad_lv.clone()]  # adjoint of lambda_{k+1}
        v_bar = [torch.zeros_like(grad_mu), torch.zeros_like(grad_lv)]  # adjoint of v_{k+1}
        theta_bar = [torch.zeros_like(p) for p in params]
        per_example = opts.step_scaling == "per_example"
        # this runs at loss.backward(), outside the forward's guard: the replayed steps need their own
        with cudnn_disabled(needs_cudnn_off(model, x)):
            for mu_k, lv_k, eps in reversed(trajectory):
                # lambda_{k+1} = lambda_k + lr v_{k+1}:  v_{k+1} receives lr * lambda_bar
                v_bar = [vb + opts.lr * lb for vb, lb in zip(v_bar, lam_bar)]
                # v_{k+1} = m v_k - clip(grad f(lambda_k)): the clipped gradient receives -v_bar
                with torch.enable_grad():
                    mu_req, lv_req = mu_k.clone().requires_grad_(True), lv_k.clone().requires_grad_(True)
                    raw = torch.autograd.grad(
                        _total(svi_objective(model, x, mu_req, lv_req, eps, ctx.kl_weight), opts), (mu_req, lv_req))
                    raw = [g.detach().requires_grad_(True) for g in raw]
                    clipped = [clip_rows(g, opts.grad_clip, per_example) for g in raw]
                    u = torch.autograd.grad(clipped, raw, grad_outputs=[-vb for vb in v_bar])
                # Hessian-vector products by central differences, noise replayed
                plus = _gradients_at(model, x, mu_k + r * u[0], lv_k + r * u[1], eps, ctx.kl_weight, opts, params)
                minus = _gradients_at(model, x, mu_k - r * u[0], lv_k - r * u[1], eps, ctx.kl_weight, opts, params)
                hvp = [(p - m) / (2 * r) for p, m in zip(plus, minus)]
                lam_bar = [lb + h for lb, h in zip(lam_bar, hvp[:2])]
                theta_bar = [tb + h for tb, h in zip(theta_bar, hvp[2:])]
                v_bar = [opts.momentum * vb for vb in v_bar]
        return (lam_bar[0], lam_bar[1], None, None, None, None, None, None, *theta_bar)


def _gradients_at(model, x, mu, logvar, eps, kl_weight, opts, params):
    """grad of sum/mean f w.r.t. (mu, logvar, *params) at a point, unclipped, detached."""
    with torch.enable_grad():
        mu, logvar = mu.detach().requires_grad_(True), logvar.detach().requires_grad_(True)
        f = _total(svi_objective(model, x, mu, logvar, eps, kl_weight), opts)
        grads = torch.autograd.grad(f, (mu, logvar, *params), allow_unused=True)
    out = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, (mu, logvar, *params))]
    return out


def refine_finite_difference(model, x, mu0, logvar0, opts: SVIOptions, steps: int,
                             kl_weight: float = 1.0, fd_step: float = 1e-5):
    """lambda_K whose gradient w.r.t. lambda_0 and the model's parameters uses finite-difference HVPs."""
    params = tuple(p for p in model.parameters() if p.requires_grad)
    return _FiniteDifferenceRefinement.apply(mu0, logvar0, model, x, opts, steps, kl_weight, fd_step, *params)
