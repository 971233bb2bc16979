"""Token sequences: a 1-layer LSTM decoder with a categorical likelihood per token.

p(x|z) = prod_t softmax(logits_t)[x_t], z into the inputs / initial state (SA-VAE text VAE) or into the
output layer (SA-VAE's synthetic oracle).
"""
from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field, model_validator
from torch import nn

from ..errors import ConfigError
from ..options import Options
from .base import GenerativeModel


class LSTMCategoricalOptions(Options):
    latent_dim: int = Field(32, ge=1)
    embed_dim: int = Field(512, ge=1)
    hidden: int = Field(1024, ge=1)
    z_to_input: bool = True  # z concatenated to every decoder input (SA-VAE / He et al. text VAE)
    z_to_hidden: bool = True  # initial hidden state = tanh(A z)
    z_to_output: bool = False  # logits_t = W [h_t; z] + c   (the SA-VAE synthetic oracle)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    encoder_embed_dim: Optional[int] = Field(None, ge=1)  # default: embed_dim
    encoder_hidden: Optional[int] = Field(None, ge=1)  # default: hidden
    fixed_to_truth: bool = False  # set theta to the data-generating oracle and freeze it

    @model_validator(mode="after")
    def _z_enters_somewhere(self):
        if not (self.z_to_input or self.z_to_hidden or self.z_to_output):
            raise ValueError("at least one of z_to_input, z_to_hidden, z_to_output must be true")
        return self


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

    name = "lstm_categorical"
    Options = LSTMCategoricalOptions
    fits = (("sequence", "categorical"),)
    default_for = fits

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
