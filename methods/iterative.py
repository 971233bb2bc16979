"""Iterative amortized inference (Marino, Yue & Mandt 2018): a learned optimizer of the ELBO.

q(z|x) = N(mu, diag exp(logvar)), lambda = (mu, logvar). Start from lambda_0 = (0, 0), the prior
(``init: encoder``: lambda_0 = a linear head on the data encoder body). For t = 0 .. T-1:

    g_t         = grad_lambda ELBO(lambda_t)        (``samples`` reparameterized draws, per datapoint)
    (a_t, d_t)  = f_phi(enc(g_t), lambda_t, h(x))   (h = model.encoder_body(), if ``use_data``)
    lambda_t+1  = sigmoid(a_t) * lambda_t + (1 - sigmoid(a_t)) * d_t,   logvar clamped to its range

``enc`` normalizes the gradient: ``log_sign`` (default; log|g| / 10 and sign g, Andrychowicz et al.
2016, keeps the gradient's scale, which tells the network how close it is) or ``layer_norm`` (LayerNorm
over the 2D entries of g_t, which divides the scale out; mnist5k quick suite, equal budget: NLL 138.9 vs
132.4 with log_sign). Each step is an elementwise convex combination, so lambda_t stays in the hull of
lambda_0 and the proposals: running more test-time steps (``test_iterations``) than were trained does
not overshoot (tested at 20x the trained T).

Training (per minibatch, T = ``iterations``, 5 as in the paper):
* the update network is trained on the *average over iterations* of -ELBO(lambda_t), t = 1..T (t = 0
  too with an encoder init). The gradients g_t fed to f are inputs (no second-order terms), and by
  default lambda_t enters step t+1 detached, so each term trains one update (``unroll: true``
  backpropagates through all earlier steps instead). Because g_t already is dELBO/dlambda_t, the term
  is formed as the surrogate  sum(g_t.detach() * lambda_t): its phi-gradient is exactly that of
  ELBO(lambda_t), and it gives the decoder no gradient;
* the decoder is trained on ELBO(lambda_T) only, with lambda_T treated as a constant.
The reported loss value is -ELBO(lambda_T). KL / entropy warm-up weights apply to every ELBO above.
The update network is an MLP (``hidden``, ELU; the paper: 2 x 512 for z = 64, smaller here for the quick
suite's z = 16) whose first layer takes h(x) through a projection computed once per posterior.

At test time ``posterior`` needs grad_lambda ELBO even under ``torch.no_grad()``: it enables autograd
locally and differentiates with ``torch.autograd.grad`` w.r.t. lambda only, so no parameter's ``.grad``
is touched. Inference costs T decoder forward+backward passes.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from benchmarks.estimators import elbo
from benchmarks.networks import Activation, activation, mlp
from benchmarks.options import Options

from ._refinement import cudnn_disabled, needs_cudnn_off
from .base import DiagonalGaussian, InferenceMethod, Step


class IterativeConfig(Options):
    iterations: int = Field(5, ge=0)  # T during training (the paper's setting)
    test_iterations: int = Field(5, ge=0)  # T in posterior() in eval mode (validation, test, timing)
    init: Literal["prior", "encoder"] = "prior"
    gradient_encoding: Literal["layer_norm", "log_sign"] = "log_sign"
    use_data: bool = True  # feed encoder features of x to the update network
    hidden: tuple[int, ...] = (128, 128)
    activation: Activation = "elu"
    samples: int = Field(1, ge=1)  # reparameterized draws per ELBO (gradient inputs and training terms)
    unroll: bool = False  # backpropagate the inference loss through all earlier iterations
    logvar_min: float = -12.0
    logvar_max: float = 8.0


class GradientEncoding(nn.Module):
    """Normalizes grad_lambda ELBO (B, 2D) into update-network inputs."""

    def __init__(self, kind: str, lambda_dim: int):
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(lambda_dim) if kind == "layer_norm" else None
        self.out_features = lambda_dim if kind == "layer_norm" else 2 * lambda_dim

    def forward(self, grad: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            return self.norm(grad)
        log_magnitude = torch.log(grad.abs() + 1e-8) / 10.0
        return torch.cat([log_magnitude, torch.sign(grad)], dim=-1)


class Iterative(InferenceMethod):
    name = "iterative"
    Config = IterativeConfig
    # the inference network's gradient is the mean over iterations with lambda_t held constant between
    # steps, the decoder's that of the last ELBO: not the gradient of the returned value (-ELBO(lambda_T));
    # tests/test_iterative.py checks that split against a hand-written version
    surrogate_loss = True

    def __init__(self, model, config: IterativeConfig):
        super().__init__(model, config)
        latent = model.latent_dim
        self.lambda_dim = 2 * latent
        features = 0
        self.data_body = None
        if config.use_data or config.init == "encoder":
            self.data_body, features = model.encoder_body()
        self.init_head = nn.Linear(features, self.lambda_dim) if config.init == "encoder" else None
        self.gradient_encoding = GradientEncoding(config.gradient_encoding, self.lambda_dim)
        # The update network is an MLP on [enc(g_t), lambda_t, h(x)] -> (gate logits, proposal). Its first
        # layer is split: the h(x) part (`data_projection`) is computed once per posterior, not T times.
        sizes = [*config.hidden, 2 * self.lambda_dim]
        self.input_layer = nn.Linear(self.gradient_encoding.out_features + self.lambda_dim, sizes[0])
        self.data_projection = nn.Linear(features, sizes[0], bias=False) if config.use_data else None
        self.first_activation = activation(config.activation) if len(sizes) > 1 else nn.Identity()
        self.update_net = mlp(sizes, config.activation) if len(sizes) > 1 else nn.Identity()

    # ----------------------------------------------------------------------------------------------
    def _split(self, lam: torch.Tensor) -> DiagonalGaussian:
        mu, logvar = lam.chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar)

    def _clamp(self, lam: torch.Tensor) -> torch.Tensor:
        mu, logvar = lam.chunk(2, dim=-1)
        return torch.cat([mu, logvar.clamp(self.config.logvar_min, self.config.logvar_max)], dim=-1)

    def _initial(self, x: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        if self.init_head is not None:
            return self._clamp(self.init_head(features))
        param = self.input_layer.weight
        return torch.zeros(x.shape[0], self.lambda_dim, dtype=param.dtype, device=x.device)

    def _bound_and_gradient(self, x: torch.Tensor, lam: torch.Tensor, step: Step, keep_graph: bool):
        """ELBO(lambda) per datapoint (B,) at a detached copy of lambda, and its gradient (B, 2D).

        With keep_graph the bound keeps its graph to the decoder (for the final term)."""
        # cuDNN's RNN backward refuses eval mode: there, a recurrent model on CUDA takes the native kernels
        # (first-order gradients only, so training mode keeps cuDNN; see methods/_refinement.py)
        eval_rnn = needs_cudnn_off(self.model, x) and not self.model.training
        with torch.enable_grad(), cudnn_disabled(eval_rnn):
            leaf = lam.detach().requires_grad_(True)
            bound = elbo(self.model, self._split(leaf), x, self.config.samples, step.kl_weight,
                         step.entropy_weight)
            (grad,) = torch.autograd.grad(bound.sum(), leaf, retain_graph=keep_graph)
        return bound, grad

    def _data_term(self, features: torch.Tensor | None) -> torch.Tensor | float:
        return self.data_projection(features) if self.data_projection is not None else 0.0

    def _update(self, lam: torch.Tensor, grad: torch.Tensor, data_term: torch.Tensor | float) -> torch.Tensor:
        hidden = self.input_layer(torch.cat([self.gradient_encoding(grad), lam], dim=-1)) + data_term
        gate_logits, proposal = self.update_net(self.first_activation(hidden)).chunk(2, dim=-1)
        gate = torch.sigmoid(gate_logits)
        return self._clamp(gate * lam + (1.0 - gate) * proposal)

    def refine(self, x: torch.Tensor, iterations: int, step: Step = Step()):
        """Run the T updates. Returns (lambdas, gradients, final bound): lambda_0..lambda_T, the gradient
        at each of them, and ELBO(lambda_T) with its graph to the decoder (lambda_T as a constant)."""
        features = self.data_body(x) if self.data_body is not None else None
        lam, data_term = self._initial(x, features), self._data_term(features)
        lambdas, grads = [lam], []
        bound = None
        for t in range(iterations + 1):
            last = t == iterations
            bound, grad = self._bound_and_gradient(x, lam, step, keep_graph=last)
            grads.append(grad)
            if last:
                break
            source = lam if self.config.unroll else lam.detach()
            lam = self._update(source, grad, data_term)
            lambdas.append(lam)
        return lambdas, grads, bound

    # ----------------------------------------------------------------------------------------------
    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        iterations = self.config.iterations if self.training else self.config.test_iterations
        features = self.data_body(x) if self.data_body is not None else None
        lam, data_term = self._initial(x, features), self._data_term(features)
        for _ in range(iterations):
            _, grad = self._bound_and_gradient(x, lam, Step(), keep_graph=False)
            lam = self._update(lam if self.config.unroll else lam.detach(), grad, data_term)
        return self._split(lam)

    def loss(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        lambdas, grads, final_bound = self.refine(x, self.config.iterations, step)
        first = 0 if self.init_head is not None else 1  # lambda_0 = prior depends on no parameter
        terms = [(g.detach() * lam).sum() for lam, g in zip(lambdas[first:], grads[first:])]
        decoder_loss = -final_bound.mean()
        if not terms:
            return decoder_loss
        # mean over iterations of ELBO(lambda_t), per datapoint; only its phi-gradient matters
        inference_surrogate = torch.stack(terms).mean() / x.shape[0]
        return decoder_loss - (inference_surrogate - inference_surrogate.detach())
