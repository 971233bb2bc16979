"""Generated datasets with a known generator: the linear-Gaussian model and the SA-VAE LSTM oracle."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..models import LSTMCategorical, LSTMCategoricalOptions
from ..quadrature import log_marginal_2d
from .core import SPLITS, DataSplits, Dataset


# --------------------------------------------------------------------------------------------------
# linear_gaussian: an exactly solvable latent model, generated from a seed


class LinearGaussianData(Dataset):
    """x = W z + b + e, z ~ N(0, I_d), e ~ N(0, noise_std^2 I), generated from `seed`.

    With ``diagonal_posterior`` W = Q diag(s) with orthonormal Q, so W^T W is diagonal and the true
    posterior is a diagonal Gaussian (inside every method's base family); otherwise W has correlated
    columns and the posterior covariance is full. The exact test NLL under the true parameters is stored
    as ``meta.true_nll`` (nats per datapoint).
    """

    name = "linear_gaussian"
    modality = "vector"
    likelihood = "gaussian"

    x_dim: int = 16
    latent_dim: int = 4
    n_train: int = 2000
    n_valid: int = 500
    n_test: int = 500
    noise_std: float = 0.5
    diagonal_posterior: bool = True
    seed: int = 0

    def truth(self) -> dict:
        g = torch.Generator().manual_seed(self.seed)
        if self.latent_dim > self.x_dim:
            raise ConfigError("datasets.linear_gaussian.data: latent_dim must be <= x_dim")
        raw = torch.randn(self.x_dim, self.latent_dim, generator=g, dtype=torch.float64)
        if self.diagonal_posterior:
            q, _ = torch.linalg.qr(raw)
            scales = torch.linspace(0.5, 2.0, self.latent_dim, dtype=torch.float64)
            W = q * scales
        else:
            W = raw
        b = torch.randn(self.x_dim, generator=g, dtype=torch.float64)
        psi = torch.full((self.x_dim,), self.noise_std**2, dtype=torch.float64)
        return {"W": W, "b": b, "psi": psi}

    def build(self, data_dir: Path) -> DataSplits:
        t = self.truth()
        g = torch.Generator().manual_seed(self.seed + 1)
        n = {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}
        splits = {}
        for s in SPLITS:
            z = torch.randn(n[s], self.latent_dim, generator=g, dtype=torch.float64)
            e = torch.randn(n[s], self.x_dim, generator=g, dtype=torch.float64) * t["psi"].sqrt()
            splits[s] = (z @ t["W"].T + t["b"] + e).float()
        marginal = torch.distributions.MultivariateNormal(
            t["b"], covariance_matrix=t["W"] @ t["W"].T + torch.diag(t["psi"])
        )
        true_nll = float(-marginal.log_prob(splits["test"].double()).mean())
        meta = {"truth": t, "true_nll": true_nll, "true_nll_method": "exact (closed form)"}
        return DataSplits("linear_gaussian", "vector", "gaussian", splits["train"], splits["valid"],
                          splits["test"], "none", meta)


# --------------------------------------------------------------------------------------------------
# synthetic_oracle: the SA-VAE synthetic LSTM oracle (Kim et al. 2018, section 5.1)


class SyntheticOracle(Dataset):
    """Sequences of `length` tokens from a random LSTM oracle with a 2-d latent z ~ N(0, I).

    x_t ~ softmax(W [h_t; z] + c), h_t = LSTM(embed(x_{t-1})), h_0 = 0, x_0 input = a <s> vector.
    Every oracle parameter ~ U(-1, 1) except the z -> vocabulary weights ~ U(-5, 5), so z matters
    (PROTOCOLS.md). Everything is drawn from `seed`. The oracle is stored as ``meta.truth`` (a state
    dict of the ``lstm_categorical`` family with z in the output layer only), so ``model.fixed_to_truth``
    gives the "oracle generator fixed" setting. The true test NLL is computed by adaptive 2-d quadrature
    (benchmarks/quadrature.py); ``meta.true_nll_error`` is the largest per-datapoint error estimate.
    """

    name = "synthetic_oracle"
    modality = "sequence"
    likelihood = "categorical"

    vocab_size: int = 1000
    length: int = 5
    hidden: int = 100
    embed_dim: int = 100
    n_train: int = 5000
    n_valid: int = 500
    n_test: int = 500
    seed: int = 0
    quadrature_points: int = 31

    def oracle(self):
        options = LSTMCategoricalOptions(latent_dim=2, embed_dim=self.embed_dim, hidden=self.hidden,
                                         z_to_input=False, z_to_hidden=False, z_to_output=True)
        model = LSTMCategorical(self.vocab_size, options)
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                bound = 5.0 if name == "out_z.weight" else 1.0
                param.copy_(torch.rand(param.shape, generator=g) * 2 * bound - bound)
        model.max_length = self.length
        return model.eval()

    def build(self, data_dir: Path) -> DataSplits:
        model = self.oracle()
        g = torch.Generator().manual_seed(self.seed + 1)
        n = {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}
        splits = {}
        for s in SPLITS:
            z = torch.randn(n[s], 2, generator=g)
            splits[s] = model.sample(z, self.length, generator=g)
        with torch.no_grad():
            results = [log_marginal_2d(model, x, fine=self.quadrature_points) for x in splits["test"].split(10)]
        log_px = torch.cat([r.log_px for r in results])
        error = torch.cat([r.error for r in results])
        meta = {
            "truth": {k: v.clone() for k, v in model.state_dict().items()},
            "vocab_size": self.vocab_size,
            "true_nll": float(-log_px.mean()),
            "true_nll_error": float(error.max()),
            "true_nll_method": f"adaptive 2-d quadrature, {self.quadrature_points}^2 points per datapoint",
        }
        return DataSplits("synthetic_oracle", "sequence", "categorical", splits["train"], splits["valid"],
                          splits["test"], "none", meta)
