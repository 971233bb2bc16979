"""Auxiliary-variable flow (the "Flow" posterior of Cremer, Li & Duvenaud 2018, Inference Suboptimality).

Real NVP-style affine couplings on the pair (z, v), v an auxiliary variable of the latent's size D, with a
learned reverse model r that scores v at the end of the flow. With c = ELU(W_c h(x)) a context vector of
size D from the encoder features h(x):

    z_0 = mu(x) + sigma(x) * eps,                   log q(z_0|x)     = log N(z_0; mu, sigma^2)
    v_0 = m_v(z_0, c) + s_v(z_0, c) * eps',         log q(v_0|z_0,x) = log N(v_0; m_v, s_v^2)
    for t = 1..T (separate weights per step):
        (a, b)   = NN_t([z, c]),   v <- v * sigmoid(b) - ELU(a)      (or + a: ``shift_activation: none``)
        (a', b') = NN'_t([v, c]),  z <- z * sigmoid(b') + a'
    log |det d(z_T, v_T)/d(z_0, v_0)| = L = sum_t sum_i [log sigmoid(b_t,i) + log sigmoid(b'_t,i)]

Each half-step is affine in the variable it updates given the other, so it is invertible with a
block-triangular Jacobian whose diagonal holds the sigmoids, and the log-det of the whole map is the sum L;
log sigmoid is computed as ``F.logsigmoid`` (stable for large |b|). The reverse model is
r(v_T|x, z_T) = N(v_T; m_r(z_T, c), s_r^2(z_T, c)), and

    log q~ = log q(z_0|x) + log q(v_0|z_0,x) - L - log r(v_T|x, z_T)

is what ``Posterior.sample`` returns as log_q: the shared estimator's log p(x, z_T) - log q~ is the
auxiliary-variable bound, E_q[log w] <= log p(x) and E_q[w] = p(x) for any r, so IS-NLL stays valid
(Ranganath et al. 2016; Maaløe et al. 2016). Entropy annealing weights the whole log q~, as the source does.

Source (paraphrased; no code taken): variant A, the Table-1 amortized Flow of lxuechen/inference-suboptimality
@ 72242d2, vae.py lines 60-72, 74-82, 116-118 and utils/approx_posts.py lines 27-85, 88-137
(docs/paper_sources.md, section 2.3). Its defaults are reproduced here: T = 2 steps, context on,
q(v_0|z_0,x) an MLP on [z_0, c] (2 x 200 ELU), one hidden layer of 200 ELU units per coupling net, r an
MLP on [z_T, c] (2 x 200 ELU), the ELU shift in the v-update. Variant B (chriscremer/Inference-Suboptimality
@ 867a4f0, models/distributions.py lines 81-248) is ``aux_base: standard`` (q(v_0) = N(0, I)),
``context: false`` (couplings and r see z or v only, r has no x input), ``shift_activation: none``,
``coupling_hidden: [50]``, ``coupling_activation: tanh``, ``hidden: [50, 50]``.

Differences from the source, none changing the bound's value:
* Gaussian log-densities include the -D/2 log 2 pi constants (the suite's convention); variant A's code omits
  them everywhere. The log-weight is the same: the constants of log p(z) - log q(z_0) - log q(v_0) + log r
  cancel; only log q~ on its own differs, by -D/2 log 2 pi.
* Initialisation (``gate_bias``): the last layer of every coupling net starts with zero weights, zero shift
  bias and scale bias ``gate_bias`` (+2), so each step starts as the linear map z <- sigmoid(2) z,
  v <- sigmoid(2) v (0.88, a near-identity with a constant log-det) and grows nonlinear in training, as IAF's
  gates do here. ``gate_bias: null`` keeps PyTorch's default init everywhere (the source's choice: scales
  near sigmoid(0) = 1/2 per half-step at the start). On mnist5k (latent 16, 100 epochs, 2 seeds) neither
  init was unstable; the near-identity one ended slightly ahead (valid ELBO -116.5 / -115.8 vs -117.4 / -116.0).
* Every first layer on [u, c] is computed as W_u u + W_c c + b (c once per datapoint, not once per sample);
  this is the same function as an MLP on the concatenation.
* Log-variances are clamped to [logvar_min, logvar_max] like the suite's other methods.

The posterior uses only tensor ops (no test-time autograd), so ``benchmarks.localopt.optimize_family`` vmaps
it (q*_family = the per-datapoint best member of this family, the role of the source's local Flow).
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from benchmarks.networks import Activation, activation, mlp
from benchmarks.options import Options

from .base import LOG_2PI, InferenceMethod, Posterior, gaussian_log_prob

Sizes = tuple[Annotated[int, Field(ge=1)], ...]


class FlowConfig(Options):
    steps: int = Field(2, ge=0)  # T, coupling steps (each a v-update then a z-update); 0: no flow
    context: bool = True  # c = ELU(linear(features)) of size D fed to q(v0|z0,x), couplings and r
    aux_base: Literal["conditional", "standard"] = "conditional"  # q(v0|z0,x) an MLP, or N(0, I) (variant B)
    shift_activation: Literal["elu", "none"] = "elu"  # v <- v*sigmoid(b) - ELU(a) (variant A), or + a
    hidden: Sizes = (200, 200)  # hidden layers of the q(v0|z0,x) and r(vT|x,zT) nets
    coupling_hidden: Sizes = (200,)  # hidden layers of each coupling net
    activation: Activation = "elu"
    coupling_activation: Optional[Activation] = None  # None: `activation`
    gate_bias: Optional[float] = 2.0  # near-identity init (module doc); None: PyTorch's default init
    train_samples: int = Field(1, ge=1)
    logvar_min: float = -12.0
    logvar_max: float = 8.0


class ConditionedMLP(nn.Module):
    """(u (..., B, U), c (B, C) or None) -> MLP([u, c]) with first layer W_u u + W_c c + b."""

    def __init__(self, input_dim: int, context_dim: int, hidden: tuple[int, ...], output_dim: int,
                 activation_name: str):
        super().__init__()
        sizes = [*hidden, output_dim]
        self.input_in = nn.Linear(input_dim, sizes[0])
        self.context_in = nn.Linear(context_dim, sizes[0], bias=False) if context_dim > 0 else None
        self.rest = nn.Sequential(activation(activation_name), mlp(sizes, activation_name)) if hidden else None

    def forward(self, u: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        out = self.input_in(u)
        if self.context_in is not None:
            out = out + self.context_in(context)
        return out if self.rest is None else self.rest(out)

    @torch.no_grad()
    def start_constant(self, bias: torch.Tensor) -> None:
        """Zero the weights of the output layer and set its bias: the net starts as the constant `bias`."""
        if self.rest is None:
            self.input_in.weight.zero_()
            if self.context_in is not None:
                self.context_in.weight.zero_()
            self.input_in.bias.copy_(bias)
        else:
            self.rest[-1][-1].weight.zero_()
            self.rest[-1][-1].bias.copy_(bias)


class CouplingStep(nn.Module):
    """v <- v sigmoid(b) + shift(a), (a, b) = NN([z, c]); then z <- z sigmoid(b') + a', (a', b') = NN'([v, c])."""

    def __init__(self, dim: int, context_dim: int, hidden: tuple[int, ...], activation_name: str,
                 elu_shift: bool, gate_bias: float | None):
        super().__init__()
        self.v_net = ConditionedMLP(dim, context_dim, hidden, 2 * dim, activation_name)
        self.z_net = ConditionedMLP(dim, context_dim, hidden, 2 * dim, activation_name)
        self.elu_shift = elu_shift
        if gate_bias is not None:
            start = torch.cat([torch.zeros(dim), torch.full((dim,), float(gate_bias))])
            self.v_net.start_constant(start)
            self.z_net.start_constant(start)

    def forward(self, z: torch.Tensor, v: torch.Tensor, context: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z', v', log |det d(z', v')/d(z, v)|), the last summed over D."""
        a, b = self.v_net(z, context).chunk(2, dim=-1)
        v = v * torch.sigmoid(b) + (-F.elu(a) if self.elu_shift else a)
        log_det = F.logsigmoid(b).sum(-1)
        a, b = self.z_net(v, context).chunk(2, dim=-1)
        z = z * torch.sigmoid(b) + a
        return z, v, log_det + F.logsigmoid(b).sum(-1)


class FlowPosterior(Posterior):
    """q~(z_T|x): (z_0, v_0) ~ q(z_0|x) q(v_0|z_0,x) pushed through the couplings, scored with r(v_T|x,z_T)."""

    def __init__(self, method: "AuxiliaryFlow", mu: torch.Tensor, logvar: torch.Tensor,
                 context: torch.Tensor | None):
        self.method, self.mu, self.logvar, self.context = method, mu, logvar, context

    def transform(self, eps_z: torch.Tensor, eps_v: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Standard-normal noise, each (n, B, D) -> (z_T, v_T, log q~)."""
        z = self.mu + torch.exp(0.5 * self.logvar) * eps_z
        log_q = -0.5 * (eps_z.pow(2) + self.logvar + LOG_2PI).sum(-1)
        v, log_q_v = self.method.auxiliary_base(z, self.context, eps_v)
        z, v, log_det = self.method.couple(z, v, self.context)
        return z, v, log_q + log_q_v - log_det - self.method.reverse_log_prob(self.context, z, v)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        eps_z = torch.randn((n, *self.mu.shape), dtype=self.mu.dtype, device=self.mu.device)
        eps_v = torch.randn_like(eps_z)
        z, _, log_q = self.transform(eps_z, eps_v)
        return z, log_q


class AuxiliaryFlow(InferenceMethod):
    name = "flow"
    Config = FlowConfig
    test_config = {"hidden": [16], "coupling_hidden": [16]}

    def __init__(self, model, config: FlowConfig):
        super().__init__(model, config)
        dim = model.latent_dim
        context_dim = dim if config.context else 0
        hidden = tuple(config.hidden)
        self.body, features = model.encoder_body()
        self.head = nn.Linear(features, 2 * dim)
        self.context_layer = nn.Linear(features, dim) if config.context else None
        self.aux_net = (ConditionedMLP(dim, context_dim, hidden, 2 * dim, config.activation)
                        if config.aux_base == "conditional" else None)
        self.steps = nn.ModuleList(
            CouplingStep(dim, context_dim, tuple(config.coupling_hidden),
                         config.coupling_activation or config.activation, config.shift_activation == "elu",
                         config.gate_bias)
            for _ in range(config.steps))
        self.reverse_net = ConditionedMLP(dim, context_dim, hidden, 2 * dim, config.activation)

    def _gaussian(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar.clamp(self.config.logvar_min, self.config.logvar_max)

    def auxiliary_base(self, z0: torch.Tensor, context: torch.Tensor | None, eps: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_0, log q(v_0|z_0,x)) from standard-normal noise eps; q = N(0, I) for ``aux_base: standard``."""
        if self.aux_net is None:
            return eps, -0.5 * (eps.pow(2) + LOG_2PI).sum(-1)
        mu, logvar = self._gaussian(self.aux_net(z0, context))
        return mu + torch.exp(0.5 * logvar) * eps, -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(-1)

    def couple(self, z: torch.Tensor, v: torch.Tensor, context: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_T, v_T, L): the T coupling steps and their accumulated log |det|, shape (n, B)."""
        log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for step in self.steps:
            z, v, step_log_det = step(z, v, context)
            log_det = log_det + step_log_det
        return z, v, log_det

    def reverse_log_prob(self, context: torch.Tensor | None, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """log r(v_T|x, z_T), shape (n, B)."""
        return gaussian_log_prob(v, *self._gaussian(self.reverse_net(z, context)))

    def variational_family(self) -> str:
        """Named in the gap tables: this family is not the diagonal Gaussian, so the gaps stage computes
        q*_family (per-datapoint copies of every parameter above) besides q*_FFG."""
        base = "q(v0|z0,x)" if self.aux_net is not None else "q(v0) = N(0, I)"
        return f"auxiliary flow ({self.config.steps} affine coupling steps, {base}, learned r(v|x,z))"

    def posterior(self, x: torch.Tensor) -> FlowPosterior:
        features = self.body(x)
        mu, logvar = self._gaussian(self.head(features))
        context = F.elu(self.context_layer(features)) if self.context_layer is not None else None
        return FlowPosterior(self, mu, logvar, context)
