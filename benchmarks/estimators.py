"""The one shared estimator of bounds and marginal likelihoods, used by every method.

With z_s ~ q(z|x) and log-weights  log w_s = log p(x, z_s) - log q(z_s|x):

* ELBO    L[q]  = E_q[log w]                      <= log p(x)       (Monte Carlo mean of log w)
* IWAE / IS     log p(x) ~ log (1/S) sum_s w_s                      (Burda et al. 2016)
  a stochastic lower bound whose expectation increases to log p(x) as S grows; -1 times it is the
  reported test NLL. The log-sum-exp is accumulated in float64 over chunks of samples, so memory is
  bounded and the result does not depend on the chunk size.
* KL      E_q[log q(z|x) - log p(z)]   (the KL term of the bound; for auxiliary-variable methods the
  KL of the bound's joint q(z, a|x) / r(a|x, z) to p(z)).
* ESS     (sum w)^2 / sum w^2   (effective sample size of the importance weights)

For methods with auxiliary variables the posterior's log_q already is log q(z,a|x) - log r(a|x,z), so
all of the above stay valid (Maaløe et al. 2016; Ranganath et al. 2016).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class BoundTerms:
    """Per-sample terms of the bound, each of shape (n, B)."""

    log_likelihood: torch.Tensor
    log_prior: torch.Tensor
    log_q: torch.Tensor
    z: torch.Tensor

    @property
    def log_weight(self) -> torch.Tensor:
        return self.log_likelihood + self.log_prior - self.log_q


def bound_terms(model, posterior, x: torch.Tensor, n: int) -> BoundTerms:
    """Draw n reparameterized samples from the posterior and score them under the model."""
    z, log_q = posterior.sample(n)
    return BoundTerms(model.log_likelihood(x, z), model.log_prior(z), log_q, z)


def elbo(
    model,
    posterior,
    x: torch.Tensor,
    n: int = 1,
    kl_weight: float = 1.0,
    entropy_weight: float = 1.0,
) -> torch.Tensor:
    """Monte Carlo (annealed) ELBO per datapoint, shape (B,), differentiable.

    E_q[log p(x|z) + kl_weight * log p(z) - entropy_weight * log q(z|x)]; both weights 1 give the ELBO.
    """
    t = bound_terms(model, posterior, x, n)
    bound = t.log_likelihood + kl_weight * t.log_prior - entropy_weight * t.log_q
    return bound.mean(0)


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/S) sum_s exp(log_w_s) along `dim`, in float64."""
    log_w = log_w.double()
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


@dataclass
class ImportanceEstimate:
    """Per-datapoint estimates from S importance samples, float64, shape (B,)."""

    log_px: torch.Tensor  # log (1/S) sum w   (IWAE-S bound)
    elbo: torch.Tensor  # (1/S) sum log w
    log_likelihood: torch.Tensor  # (1/S) sum log p(x|z)
    kl: torch.Tensor  # (1/S) sum [log q - log p(z)]
    ess: torch.Tensor  # (sum w)^2 / sum w^2
    samples: int


def chunk_size(samples: int, batch: int, elements_per_sample: int, max_elements: int) -> int:
    """How many samples per chunk keep the decoder's output below `max_elements` numbers."""
    per_sample = max(1, batch * elements_per_sample)
    return int(max(1, min(samples, max_elements // per_sample)))


@torch.no_grad()
def importance_sample(
    model, posterior, x: torch.Tensor, samples: int, chunk: int | None = None
) -> ImportanceEstimate:
    """IS estimate of log p(x) with the posterior as proposal, S = `samples`, chunked over samples.

    Running float64 accumulators: lse(log w), lse(2 log w), sum log w, sum log p(x|z), sum KL.
    """
    chunk = samples if chunk is None else max(1, min(chunk, samples))
    batch = x.shape[0]
    neg_inf = torch.full((batch,), -math.inf, dtype=torch.float64, device=x.device)
    lse_w, lse_w2 = neg_inf.clone(), neg_inf.clone()
    sum_lw = torch.zeros(batch, dtype=torch.float64, device=x.device)
    sum_ll, sum_kl = sum_lw.clone(), sum_lw.clone()
    done = 0
    while done < samples:
        n = min(chunk, samples - done)
        t = bound_terms(model, posterior, x, n)
        log_w = t.log_weight.double()
        lse_w = torch.logaddexp(lse_w, torch.logsumexp(log_w, 0))
        lse_w2 = torch.logaddexp(lse_w2, torch.logsumexp(2.0 * log_w, 0))
        sum_lw += log_w.sum(0)
        sum_ll += t.log_likelihood.double().sum(0)
        sum_kl += (t.log_q - t.log_prior).double().sum(0)
        done += n
    return ImportanceEstimate(
        log_px=lse_w - math.log(samples),
        elbo=sum_lw / samples,
        log_likelihood=sum_ll / samples,
        kl=sum_kl / samples,
        ess=torch.exp(2.0 * lse_w - lse_w2),
        samples=samples,
    )
