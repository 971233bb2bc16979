"""The shared generative models p_theta(x, z) = p_theta(x|z) N(z; 0, I), one family per data modality.

Every method on a dataset gets the same family and sizes, built by ``build``. A family also supplies
the *encoder body* (x -> features) matching its modality, so methods add only heads and stay
modality-agnostic.

Families:
* ``bernoulli_mlp``  binary images / vectors: MLP decoder, p(x|z) = prod_i Bernoulli(x_i; sigmoid(f(z)_i))
  (IWAE / Cremer et al.: z = 50, 200-200 tanh, encoder 784-200-200-2z).
* ``lstm_categorical``  token sequences: 1-layer LSTM decoder, p(x|z) = prod_t softmax(logits_t)[x_t],
  z into the inputs / initial state (SA-VAE text VAE) or into the output layer (SA-VAE's synthetic oracle).
* ``conv_image``  RGB images (CelebA 64x64): conv encoder, deconv decoder, discretized logistic or
  discretized Gaussian likelihood over 8-bit pixels (NLL in nats; bits/dim = NLL / (D ln 2)).
* ``linear_gaussian``  factor analysis x = W z + b + e, e ~ N(0, diag psi): log p(x) = log N(x; b, W W^T +
  diag psi) and the posterior N(S W^T Psi^-1 (x - b), S), S = (I + W^T Psi^-1 W)^-1 are exact.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import numpy as np

import torch
from torch import nn
from torch.nn import functional as F

from .config import from_dict
from .errors import ConfigError

LOG_2PI = math.log(2.0 * math.pi)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
}


def mlp(sizes: list[int], activation: str, final_activation: bool = False) -> nn.Sequential:
    """Linear layers of the given sizes with `activation` between them (and after the last if asked)."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GenerativeModel(nn.Module, abc.ABC):
    """p_theta(x|z) p(z) with p(z) = N(0, I). Shapes: x (B, ...), z (n, B, D) -> per-sample (n, B)."""

    family: str = ""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)

    @abc.abstractmethod
    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p_theta(x|z), shape (n, B)."""

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.log_likelihood(x, z) + self.log_prior(z)

    @abc.abstractmethod
    def encoder_body(self) -> tuple[nn.Module, int]:
        """A fresh x -> features network for this modality, and its feature size."""

    @abc.abstractmethod
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z], for sample and reconstruction grids."""

    @classmethod
    def from_data(cls, data, options) -> "GenerativeModel":
        """Build the family for prepared data (a DataSplits) with typed options."""
        return cls(data.x_dim, options)

    def exact_log_marginal(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """log p_theta(x) in closed form where the family allows it, else None."""
        return None

    def output_elements(self) -> int:
        """Numbers the decoder produces per sample and datapoint (sizes evaluation chunks)."""
        return 1


# --------------------------------------------------------------------------------------------------
# binary data: MLP decoder with Bernoulli likelihood


@dataclass
class BernoulliMLPOptions:
    latent_dim: int = 50
    hidden: tuple[int, ...] = (200, 200)
    encoder_hidden: Optional[tuple[int, ...]] = None  # default: same as `hidden`
    activation: str = "tanh"

    def __post_init__(self):
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")


class BernoulliMLP(GenerativeModel):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(f_theta(z)_i)), f an MLP (z -> hidden -> x_dim)."""

    family = "bernoulli_mlp"

    def __init__(self, x_dim: int, options: BernoulliMLPOptions):
        super().__init__(options.latent_dim)
        self.x_dim = x_dim
        self.options = options
        self.decoder = mlp([options.latent_dim, *options.hidden, x_dim], options.activation)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(z)
        x = x.reshape(x.shape[0], -1).to(logits.dtype)
        # log Bernoulli(x; sigmoid(l)) = x * l - softplus(l)
        return (x * logits).sum(-1) - F.softplus(logits).sum(-1)

    def encoder_body(self) -> tuple[nn.Module, int]:
        hidden = list(self.options.encoder_hidden or self.options.hidden)
        body = nn.Sequential(nn.Flatten(), mlp([self.x_dim, *hidden], self.options.activation, True))
        return body, hidden[-1] if hidden else self.x_dim

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def output_elements(self) -> int:
        return self.x_dim


# --------------------------------------------------------------------------------------------------
# linear-Gaussian latent model (factor analysis): everything in closed form


@dataclass
class LinearGaussianOptions:
    latent_dim: Optional[int] = None  # default: the dataset's true latent dimension
    encoder_hidden: tuple[int, ...] = ()  # () = linear encoder, which contains the exact posterior
    activation: str = "tanh"
    fixed_to_truth: bool = False  # set theta to the data-generating parameters and freeze it


class LinearGaussian(GenerativeModel):
    """x = W z + b + e, e ~ N(0, diag(psi)); log p(x) and p(z|x) are Gaussian and exact."""

    family = "linear_gaussian"

    def __init__(self, x_dim: int, options: LinearGaussianOptions, truth: dict | None = None):
        latent_dim = options.latent_dim or (truth["W"].shape[1] if truth else None)
        if latent_dim is None:
            raise ConfigError("model.latent_dim is required for linear_gaussian without a true model")
        super().__init__(latent_dim)
        self.x_dim = x_dim
        self.options = options
        self.W = nn.Parameter(0.1 * torch.randn(x_dim, latent_dim))
        self.b = nn.Parameter(torch.zeros(x_dim))
        self.log_psi = nn.Parameter(torch.zeros(x_dim))
        if options.fixed_to_truth:
            if truth is None:
                raise ConfigError("model.fixed_to_truth needs a dataset with a known generator")
            self.set_parameters(truth["W"], truth["b"], truth["psi"])
            self.requires_grad_(False)

    @classmethod
    def from_data(cls, data, options) -> "LinearGaussian":
        return cls(data.x_dim, options, truth=data.meta.get("truth"))

    def set_parameters(self, W: torch.Tensor, b: torch.Tensor, psi: torch.Tensor) -> None:
        with torch.no_grad():
            if W.shape != self.W.shape:
                raise ConfigError(f"true W has shape {tuple(W.shape)}, model has {tuple(self.W.shape)}")
            self.W.copy_(W)
            self.b.copy_(b)
            self.log_psi.copy_(torch.log(psi))

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        mean = z @ self.W.T + self.b
        return -0.5 * ((x - mean).pow(2) * torch.exp(-self.log_psi) + self.log_psi + LOG_2PI).sum(-1)

    def marginal(self) -> torch.distributions.MultivariateNormal:
        cov = self.W @ self.W.T + torch.diag(torch.exp(self.log_psi))
        return torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov)

    def exact_log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        return self.marginal().log_prob(x)

    def exact_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B, D) and covariance (D, D) of p(z|x)."""
        w_scaled = self.W.T * torch.exp(-self.log_psi)  # W^T Psi^-1, (D, x_dim)
        precision = torch.eye(self.latent_dim, dtype=self.W.dtype, device=self.W.device) + w_scaled @ self.W
        cov = torch.linalg.inv(precision)
        mean = (x - self.b) @ (cov @ w_scaled).T
        return mean, cov

    def encoder_body(self) -> tuple[nn.Module, int]:
        hidden = list(self.options.encoder_hidden)
        if not hidden:
            return nn.Identity(), self.x_dim
        return mlp([self.x_dim, *hidden], self.options.activation, True), hidden[-1]

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W.T + self.b

    def output_elements(self) -> int:
        return self.x_dim


# --------------------------------------------------------------------------------------------------
# token sequences: LSTM decoder with a categorical likelihood per token


@dataclass
class LSTMCategoricalOptions:
    latent_dim: int = 32
    embed_dim: int = 512
    hidden: int = 1024
    z_to_input: bool = True  # z concatenated to every decoder input (SA-VAE / He et al. text VAE)
    z_to_hidden: bool = True  # initial hidden state = tanh(A z)
    z_to_output: bool = False  # logits_t = W [h_t; z] + c   (the SA-VAE synthetic oracle)
    dropout: float = 0.0
    encoder_embed_dim: Optional[int] = None  # default: embed_dim
    encoder_hidden: Optional[int] = None  # default: hidden
    fixed_to_truth: bool = False  # set theta to the data-generating oracle and freeze it

    def __post_init__(self):
        if not (self.z_to_input or self.z_to_hidden or self.z_to_output):
            raise ValueError("at least one of z_to_input, z_to_hidden, z_to_output must be true")


class SequenceEncoder(nn.Module):
    """Token sequence (B, T), padded with -1 -> LSTM state after the last token (B, hidden)."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lengths = (x >= 0).sum(1).clamp(min=1)
        out, _ = self.lstm(self.embed(x.clamp(min=0)))
        return out[torch.arange(x.shape[0], device=x.device), lengths - 1]


class LSTMCategorical(GenerativeModel):
    """p(x|z) = prod_t Categorical(x_t; softmax(logits_t)), logits from a 1-layer LSTM over x_{<t}.

    z enters as configured: concatenated to every input, as the initial hidden state, and/or in the
    output layer. Sequences are (B, T) token ids padded with -1 (padding contributes nothing). When z
    enters only the output layer, the LSTM states depend on x alone and are computed once for all samples.
    """

    family = "lstm_categorical"

    def __init__(self, vocab_size: int, options: LSTMCategoricalOptions):
        super().__init__(options.latent_dim)
        self.vocab_size = vocab_size
        self.options = options
        o = options
        self.embed = nn.Embedding(vocab_size, o.embed_dim)
        self.bos = nn.Parameter(torch.zeros(o.embed_dim))
        self.lstm = nn.LSTM(o.embed_dim + (o.latent_dim if o.z_to_input else 0), o.hidden, batch_first=True)
        self.init_hidden = nn.Linear(o.latent_dim, o.hidden) if o.z_to_hidden else None
        self.out_h = nn.Linear(o.hidden, vocab_size)
        self.out_z = nn.Linear(o.latent_dim, vocab_size, bias=False) if o.z_to_output else None
        self.dropout = nn.Dropout(o.dropout)
        self.max_length = 1

    @classmethod
    def from_data(cls, data, options):
        model = cls(int(data.meta["vocab_size"]), options)
        model.max_length = int(data.test.shape[1])
        if options.fixed_to_truth:
            truth = data.meta.get("truth")
            if truth is None:
                raise ConfigError("model.fixed_to_truth needs a dataset with a known generator")
            try:
                model.load_state_dict(truth)
            except RuntimeError as exc:
                raise ConfigError(f"model options do not match the dataset's true generator: {exc}") from None
            model.requires_grad_(False)
        return model

    def _inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decoder inputs: <s> then the embeddings of x_1 .. x_{T-1}, shape (B, T, E)."""
        previous = self.embed(tokens[:, :-1])
        bos = self.bos.expand(tokens.shape[0], 1, -1)
        return self.dropout(torch.cat([bos, previous], dim=1))

    def logits(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Token logits of shape (n, B, T, V) for z of shape (n, B, D)."""
        n, batch, _ = z.shape
        tokens = x.clamp(min=0)
        inputs = self._inputs(tokens)
        o = self.options
        if o.z_to_input or o.z_to_hidden:
            flat_z = z.reshape(n * batch, -1)
            inputs = inputs.repeat(n, 1, 1)
            if o.z_to_input:
                inputs = torch.cat([inputs, flat_z.unsqueeze(1).expand(-1, inputs.shape[1], -1)], dim=-1)
            state = None
            if o.z_to_hidden:
                h0 = torch.tanh(self.init_hidden(flat_z)).unsqueeze(0)
                state = (h0, torch.zeros_like(h0))
            hidden, _ = self.lstm(inputs, state)
            logits = self.out_h(self.dropout(hidden)).reshape(n, batch, *hidden.shape[1:-1], -1)
        else:
            hidden, _ = self.lstm(inputs)  # independent of z: once for all samples
            logits = self.out_h(self.dropout(hidden)).unsqueeze(0)
        if self.out_z is not None:
            logits = logits + self.out_z(z).unsqueeze(2)
        return logits

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if not (self.options.z_to_input or self.options.z_to_hidden):
            return self._output_only_log_likelihood(x, z)
        logits = self.logits(x, z)
        tokens = x.clamp(min=0).expand(logits.shape[:-1])
        picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        token_ll = picked - torch.logsumexp(logits, dim=-1)
        return (token_ll * (x >= 0)).sum(-1)

    def _output_only_log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) when logits_t = a_t + B z with a_t = out_h(h_t) independent of z.

        logsumexp_v(a_tv + b_v) = max a_t + max b + log sum_v exp(a_tv - max a_t) exp(b_v - max b): a
        (T x V)(V x n) matrix product per datapoint instead of n*T softmaxes over V. Sums that come out
        too small for float32 (the two maxima at different tokens) are recomputed in float64.
        """
        tokens = x.clamp(min=0)
        hidden, _ = self.lstm(self._inputs(tokens))
        a = self.out_h(self.dropout(hidden))  # (B, T, V)
        b = self.out_z(z)  # (n, B, V)
        picked = a.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) + b.gather(
            -1, tokens.unsqueeze(0).expand(b.shape[0], -1, -1))  # (n, B, T)
        a_max, b_max = a.amax(-1, keepdim=True), b.amax(-1, keepdim=True)
        sums = torch.einsum("btv,nbv->nbt", (a - a_max).exp(), (b - b_max).exp())
        if bool((sums < 1e-30).any()):
            a64, b64 = a.double(), b.double()
            exact = torch.einsum("btv,nbv->nbt", (a64 - a_max.double()).exp(), (b64 - b_max.double()).exp())
            sums = torch.where(sums < 1e-30, exact, sums.double())
        lse = sums.log() + a_max.squeeze(-1) + b_max
        return ((picked - lse) * (x >= 0)).sum(-1).to(a.dtype)

    def encoder_body(self) -> tuple[nn.Module, int]:
        o = self.options
        hidden = o.encoder_hidden or o.hidden
        return SequenceEncoder(self.vocab_size, o.encoder_embed_dim or o.embed_dim, hidden), hidden

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """Greedy decoding of max_length tokens (the mode of each step), shape (..., T)."""
        return self.greedy(z.reshape(-1, z.shape[-1]), self.max_length).reshape(*z.shape[:-1], -1)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, length: int, generator: torch.Generator | None = None,
               greedy: bool = False) -> torch.Tensor:
        """Ancestral sampling of `length` tokens for latents z of shape (B, D)."""
        o = self.options
        batch = z.shape[0]
        state = None
        if o.z_to_hidden:
            h0 = torch.tanh(self.init_hidden(z)).unsqueeze(0)
            state = (h0, torch.zeros_like(h0))
        step_input = self.bos.expand(batch, 1, -1)
        tokens = []
        for _ in range(length):
            inp = torch.cat([step_input, z.unsqueeze(1)], dim=-1) if o.z_to_input else step_input
            hidden, state = self.lstm(inp, state)
            logits = self.out_h(hidden[:, 0])
            if self.out_z is not None:
                logits = logits + self.out_z(z)
            if greedy:
                token = logits.argmax(-1)
            else:
                token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)
            tokens.append(token)
            step_input = self.embed(token).unsqueeze(1)
        return torch.stack(tokens, dim=1)

    def greedy(self, z: torch.Tensor, length: int) -> torch.Tensor:
        return self.sample(z, length, greedy=True)

    def output_elements(self) -> int:
        if not (self.options.z_to_input or self.options.z_to_hidden):
            return self.vocab_size  # per sample only B z is materialized (see above)
        return self.max_length * self.vocab_size


# --------------------------------------------------------------------------------------------------
# RGB images: conv encoder, deconv decoder, discretized likelihood over 8-bit pixels


@dataclass
class ConvImageOptions:
    latent_dim: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 256)  # per resolution halving, encoder order
    features: int = 512  # encoder body output
    likelihood: Literal["discretized_logistic", "gaussian"] = "discretized_logistic"
    min_log_scale: float = -7.0


def log_prob_discretized(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, kind: str) -> torch.Tensor:
    """log P(x) per pixel for x in {0, 1/255, ..., 1}: the mass of the bin [x - 1/510, x + 1/510] (the
    edge bins extend to -inf / +inf) under a logistic or Gaussian with this mean and scale.

    Middle bins use log(F(a) - F(b)) computed stably: for the logistic sigma(a) - sigma(b) =
    sigma(a) sigma(-b) (1 - e^(b - a)); for the Gaussian the tail on the side away from the mean.
    """
    half = 1.0 / 510.0
    inv = torch.exp(-log_scale)
    upper, lower = (x + half - mean) * inv, (x - half - mean) * inv
    if kind == "discretized_logistic":
        log_cdf_upper = F.logsigmoid(upper)
        log_sf_lower = F.logsigmoid(-lower)
        middle = log_cdf_upper + log_sf_lower + torch.log(-torch.expm1(lower - upper))
    else:
        from torch.special import log_ndtr

        log_cdf_upper, log_sf_lower = log_ndtr(upper), log_ndtr(-lower)
        right = (lower + upper) > 0  # bin to the right of the mean: use survival functions
        hi = torch.where(right, log_ndtr(-lower), log_ndtr(upper))
        lo = torch.where(right, log_ndtr(-upper), log_ndtr(lower))
        middle = hi + torch.log(-torch.expm1(lo - hi))
    return torch.where(x < half, log_cdf_upper, torch.where(x > 1 - half, log_sf_lower, middle))


class ConvImage(GenerativeModel):
    """p(x|z) = prod_pixels Discretized{Logistic|Gaussian}(x; mean_theta(z), scale_c): a deconv decoder
    from z to per-pixel means in [0, 1] and a learned log-scale per channel. NLL in nats over 8-bit
    pixels, so bits/dim = NLL / (D ln 2)."""

    family = "conv_image"

    def __init__(self, image_shape: tuple[int, int, int], options: ConvImageOptions):
        super().__init__(options.latent_dim)
        self.image_shape = tuple(image_shape)
        self.options = options
        channels, size = self.image_shape[0], self.image_shape[1]
        levels = self._levels(size, len(options.channels))
        self.start = size // 2**levels
        widths = list(options.channels[:levels])
        self.width = widths[-1]
        self.project = nn.Linear(options.latent_dim, widths[-1] * self.start**2)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[::-1], widths[::-1][1:] + [channels]):
            layers += [nn.ELU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
        self.deconv = nn.Sequential(*layers)
        self.log_scale = nn.Parameter(torch.full((channels, 1, 1), -2.0))

    @staticmethod
    def _levels(size: int, available: int) -> int:
        levels = 0
        while levels < available and size % 2 ** (levels + 1) == 0 and size // 2 ** (levels + 1) >= 4:
            levels += 1
        if levels == 0:
            raise ConfigError(f"image size {size} is too small for the conv family (need >= 8)")
        return levels

    @classmethod
    def from_data(cls, data, options):
        return cls(tuple(data.meta["image_shape"]), options)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = self.project(z.reshape(-1, z.shape[-1])).reshape(-1, self.width, self.start, self.start)
        return torch.sigmoid(self.deconv(h)).reshape(*lead, *self.image_shape)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        mean = self.decode_mean(z)  # (n, B, C, H, W)
        log_scale = self.log_scale.clamp(min=self.options.min_log_scale)
        per_pixel = log_prob_discretized(x.reshape(x.shape[0], *self.image_shape), mean, log_scale,
                                         self.options.likelihood)
        return per_pixel.flatten(-3).sum(-1)

    def encoder_body(self) -> tuple[nn.Module, int]:
        channels, size = self.image_shape[0], self.image_shape[1]
        levels = self._levels(size, len(self.options.channels))
        widths = [channels, *self.options.channels[:levels]]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ELU()]
        flat = widths[-1] * (size // 2**levels) ** 2
        body = nn.Sequential(_AsImage(self.image_shape), *layers,
                             nn.Flatten(), nn.Linear(flat, self.options.features), nn.ELU())
        return body, self.options.features

    def output_elements(self) -> int:
        return int(np.prod(self.image_shape))


class _AsImage(nn.Module):
    """Reshape a batch to (B, C, H, W) whatever its incoming layout."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


# --------------------------------------------------------------------------------------------------
# registry of families

FAMILIES: dict[str, tuple[type, type]] = {
    "bernoulli_mlp": (BernoulliMLP, BernoulliMLPOptions),
    "linear_gaussian": (LinearGaussian, LinearGaussianOptions),
    "lstm_categorical": (LSTMCategorical, LSTMCategoricalOptions),
    "conv_image": (ConvImage, ConvImageOptions),
}


def _split_family(dataset_cls: type, model_cfg: dict) -> tuple[str, dict]:
    cfg = dict(model_cfg or {})
    family = cfg.pop("family", dataset_cls.default_family)
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; available: {sorted(FAMILIES)}")
    if family not in dataset_cls.families:
        raise ConfigError(
            f"model family {family!r} does not fit dataset {dataset_cls.name!r} "
            f"(it takes {list(dataset_cls.families)})"
        )
    return family, cfg


def family_options(dataset_cls: type, model_cfg: dict, where: str = "model"):
    """Type-checked options of the model family a dataset's `model:` section selects."""
    family, cfg = _split_family(dataset_cls, model_cfg)
    return from_dict(FAMILIES[family][1], cfg, where)


def build(data, model_cfg: dict | None = None) -> GenerativeModel:
    """The generative model for prepared data `data` (a DataSplits) and a `model:` config section."""
    from .datasets import dataset_class

    dataset_cls = dataset_class(data.name)
    family, cfg = _split_family(dataset_cls, model_cfg or {})
    model_cls, options_cls = FAMILIES[family]
    options = from_dict(options_cls, cfg, f"datasets.{data.name}.model")
    return model_cls.from_data(data, options)
