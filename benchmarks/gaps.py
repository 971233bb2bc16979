"""The inference-gap decomposition of a trained method (Cremer, Li & Duvenaud 2018), per datapoint.

    log p(x) - L[q]  =  [log p(x) - L[q*]]  +  [L[q*] - L[q]]
    inference gap       approximation gap      amortization gap

q = q(z|x) is the method's own posterior, q* the best member of a variational family for that one datapoint,
found by local optimization of -L with the noise of ``samples`` reparameterized draws per step.

q*_FFG (always) and q*_family (``family: true``, the method's own family): see ``benchmarks.localopt``.

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
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import torch
from pydantic import Field

from . import provenance
from methods.base import FFG_FAMILY

from .ais import AISConfig, ais_log_px
from .estimators import chunk_size, importance_sample
from .localopt import FamilyNotOptimizable, LocalOptimConfig, family_importance_sample, optimize_family, optimize_ffg
from .options import Options
from .runtime import build_trained, cudnn_disabled, needs_cudnn_off


# --------------------------------------------------------------------------------------------------
# the decomposition


Split = Literal["train", "valid", "test"]


class GapConfig(Options):
    enabled: bool = False  # run the gaps stage for the cells of this config section
    #: splits to decompose and how many points of each (null: all of them)
    points: dict[Split, Optional[Annotated[int, Field(ge=1)]]] = {"train": 1000, "test": None}
    elbo_samples: int = Field(5000, ge=1)  # L[q] and IWAE with q as proposal
    eval_samples: int = Field(5000, ge=1)  # L[q*] and IWAE with q*_FFG as proposal
    local: LocalOptimConfig = LocalOptimConfig()
    ais: Optional[AISConfig] = AISConfig()  # None: log p(x) from IWAE only
    #: which points of each split: a seeded random subset (``seed``), or the first ones as stored
    subset: Literal["random", "first"] = "random"
    family: bool = False  # also q*_family: the method's own family optimized per datapoint
    family_vectorize: Literal["auto", "vmap", "loop"] = "auto"
    family_batch_size: int = Field(10, ge=1)
    #: the stopping rule and budget of the q*_family optimization (null: ``local``); a per-datapoint copy of
    #: a flow or encoder costs about 10x an FFG step, so CPU configs give it fewer steps (gaps.md reports
    #: how many points the rule stopped)
    family_local: Optional[LocalOptimConfig] = None
    batch_size: int = Field(100, ge=1)
    max_chunk_elements: int = Field(1 << 20, ge=1)
    seed: int = Field(0, ge=0)


@dataclass
class GapResult:
    """Per-datapoint estimates (float64, shape (N,)) and the config that produced them."""

    per_point: dict[str, torch.Tensor]
    config: GapConfig
    log_px_source: str  # which candidate estimator gave log_px (the largest mean over the points)
    families: Optional[dict] = None  # {"ffg": name, "family": name of the method's own family}
    amortized: bool = True  # False (svi): no encoder, so L[q*] - L[q] is an optimization gap

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
        stopped = {f"stopped_by_rule_{k}": float(self.per_point[f"local_stopped_{k}"].mean())
                   for k in ("ffg", "family") if f"local_stopped_{k}" in self.per_point}
        payload = {
            "n_points": self.n_points,
            "q_star": "family" if "elbo_qstar_family" in self.per_point else "ffg",
            "families": self.families or {"ffg": FFG_FAMILY},
            "amortized": self.amortized,
            "log_px_source": self.log_px_source,
            "diagnostics": stopped,
            "metrics": self.summary(),
            "config": self.config.to_dict(),
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
    if cfg.family and method.variational_family() != FFG_FAMILY:
        family_elbo, family_steps, family_stopped = [], [], []
        try:
            for xb in x.split(cfg.family_batch_size):
                fam = optimize_family(method, xb, cfg.family_local or cfg.local, cfg.family_vectorize)
                chunk_f = chunk_size(cfg.eval_samples, 1, elements, cfg.max_chunk_elements)
                family_elbo.append(family_importance_sample(method, fam.params, xb, cfg.eval_samples, chunk_f).elbo)
                family_steps.append(fam.steps.double())
                family_stopped.append(fam.stopped.double())
        except FamilyNotOptimizable as exc:
            warnings.warn(f"no q*_family: {exc}; only the FFG decomposition is reported")
        else:
            out["elbo_qstar_family"] = torch.cat(family_elbo)
            out["local_steps_family"] = torch.cat(family_steps)
            out["local_stopped_family"] = torch.cat(family_stopped)
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
    # AIS and the local optimizations differentiate through the decoder (and encoder) in eval mode, which
    # cuDNN's RNN kernels refuse: native kernels for recurrent models on CUDA
    with _seeded(cfg.seed, batches[0].device), cudnn_disabled(needs_cudnn_off(method.model, batches[0])):
        for xb in batches:
            per_batch.append(_batch_gaps(method, xb, cfg))
    per_point = {k: torch.cat([b[k] for b in per_batch]) for k in per_batch[0]}
    source = _decompose(per_point)
    families = {"ffg": FFG_FAMILY, "family": method.variational_family()}
    return GapResult(per_point, cfg, source, families, method.amortized)


def subset_indices(n_available: int, n_points: int | None, subset: str, seed: int) -> torch.Tensor:
    """Which points of a split to decompose: all, the first n, or a seeded random n (sorted)."""
    if n_points is None or n_points >= n_available:
        return torch.arange(n_available)
    if subset == "first":
        return torch.arange(n_points)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_available, generator=generator)[:n_points].sort().values


def split_points(data, split: str, indices: torch.Tensor, batch_size: int, device, seed: int = 0) -> list:
    """The points at `indices` of a split as model-ready minibatches (dynamic binarization of the train
    split drawn with a fixed seed, so the points are the same on every run)."""
    generator = torch.Generator().manual_seed(seed)
    return list(data.batches(split, batch_size, generator=generator, device=device, indices=indices))


def run_gaps(cell: dict, model_file: Path, data, device, per_point: bool = False) -> dict:
    """The gaps.json payload of one trained cell: for each split of ``gaps.points`` (default: 1000 train
    points and all test points, the reference protocol; a seeded random subset where fewer are asked
    for) the ``GapResult.to_dict`` of ``inference_gaps`` and the indices of the points."""
    config = GapConfig.parse(cell["gaps"], "gaps")
    device = torch.device(device)
    method, _ = build_trained(cell, data, device, model_file)
    results = {}
    for split, n_points in config.points.items():
        indices = subset_indices(data.split(split).shape[0], n_points, config.subset, config.seed)
        points = split_points(data, split, indices, config.batch_size, device, config.seed)
        results[split] = inference_gaps(method, points, config).to_dict(per_point)
        results[split]["indices"] = indices.tolist()
    return {
        "dataset": cell["dataset"],
        "method": cell["method"],
        "seed": cell["seed"],
        "splits": results,
        "hashes": cell["hashes"],
        "provenance": provenance.record(device, cell["seed"], cell["hashes"]["train"]),
    }
