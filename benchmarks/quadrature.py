"""log p(x) by adaptive quadrature over a 2-d latent space (used as the *true* NLL of 2-d models).

    p(x) = ∫ p(x, z) dz,   z ∈ R².

Per datapoint: a coarse grid on [-R, R]² locates the posterior; then, repeatedly, the grid is
re-centred on the posterior mean m and aligned with its covariance C (z = m + L u, L Lᵀ = C) and the
integral becomes |det L| ∫ p(x, m + L u) du over the box |u_i| ≤ `box` (Riemann sum in float64, which
for a smooth, rapidly decaying integrand converges as fast as the trapezoid rule: geometrically in the
number of points; a near-Gaussian integrand at 0.5 standard deviations per cell is exact to ~1e-30).

Error estimate: the largest of |I(n) − I(n_coarse)| (resolution) and |I(box) − I(box + 2)|
(truncation) on the final frame. Exact for log-concave posteriors up to that error (the SA-VAE oracle's
posterior is log-concave: its logits are affine in z).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class QuadratureResult:
    log_px: torch.Tensor  # (B,), float64
    error: torch.Tensor  # (B,), float64: estimated absolute error in nats


def _grid(n: int, half_width: float, dtype=torch.float64) -> tuple[torch.Tensor, float]:
    axis = torch.linspace(-half_width, half_width, n, dtype=dtype)
    u = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    return u, float(axis[1] - axis[0]) ** 2


@torch.no_grad()
def _log_joint_on(model, x: torch.Tensor, z: torch.Tensor, max_pairs: int) -> torch.Tensor:
    """log p(x_b, z_{g,b}) for z of shape (G, B, 2), chunked over G; float64 (G, B)."""
    per_chunk = max(1, max_pairs // max(1, x.shape[0]))
    param_dtype = next(model.parameters()).dtype
    out = [model.log_joint(x, zc.to(param_dtype)).double() for zc in z.split(per_chunk)]
    return torch.cat(out)


def _integrate(model, x, mean, chol, n, box, max_pairs):
    """log ∫ p(x, m + L u) du |det L| over |u_i| <= box, and the posterior moments on that grid."""
    u, cell = _grid(n, box)
    z = mean.unsqueeze(0) + torch.einsum("bij,gj->gbi", chol, u)  # (G, B, 2)
    log_f = _log_joint_on(model, x, z, max_pairs)
    log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    log_px = torch.logsumexp(log_f, 0) + math.log(cell) + log_det
    weights = torch.softmax(log_f, 0).unsqueeze(-1)  # (G, B, 1)
    m = (weights * z).sum(0)
    centred = z - m
    cov = torch.einsum("gb,gbi,gbj->bij", weights.squeeze(-1), centred, centred)
    return log_px, m, cov


def log_marginal_2d(
    model,
    x: torch.Tensor,
    *,
    radius: float = 6.0,
    coarse: int = 21,
    fine: int = 31,
    box: float = 7.0,
    passes: int = 2,
    max_pairs: int = 1024,
) -> QuadratureResult:
    """Adaptive 2-d quadrature of log p(x) for a model with latent_dim == 2 (see module docstring)."""
    if model.latent_dim != 2:
        raise ValueError(f"quadrature needs a 2-d latent space, the model has {model.latent_dim}")
    batch = x.shape[0]
    eye = torch.eye(2, dtype=torch.float64).expand(batch, 2, 2)
    mean = torch.zeros(batch, 2, dtype=torch.float64)
    # pass 0: the axis-aligned coarse grid [-radius, radius]^2 (box = radius in unit coordinates)
    _, mean, cov = _integrate(model, x, mean, eye, coarse, radius, max_pairs)
    spacing = torch.full((batch,), 2 * radius / (coarse - 1), dtype=torch.float64)
    for _ in range(passes):
        # moments from a grid can miss a posterior narrower than its spacing: widen by half a cell
        frame = cov + (spacing / 2).pow(2).view(-1, 1, 1) * torch.eye(2, dtype=torch.float64)
        chol = torch.linalg.cholesky(frame)
        spacing = 2 * box / (coarse - 1) * torch.linalg.eigvalsh(frame)[:, 0].sqrt()
        _, mean, cov = _integrate(model, x, mean, chol, coarse, box, max_pairs)
    chol = torch.linalg.cholesky(cov + 1e-12 * torch.eye(2, dtype=torch.float64))
    final, _, _ = _integrate(model, x, mean, chol, fine, box, max_pairs)
    lower_res, _, _ = _integrate(model, x, mean, chol, coarse, box, max_pairs)
    wider, _, _ = _integrate(model, x, mean, chol, fine, box + 2.0, max_pairs)
    error = torch.maximum((final - lower_res).abs(), (final - wider).abs())
    return QuadratureResult(final, error)
