"""Evaluation of one trained cell on the test split, written as one small metrics.json.

Metrics (nats per datapoint, means over test points):
* ``test_nll``   -log p(x) by importance sampling with the method's own posterior as proposal,
                 S = ``is_samples`` (estimators.importance_sample; float64 log-sum-exp, chunked)
* ``test_elbo``  E_q[log p(x,z) - log q], from the same S samples
* ``test_kl``    E_q[log q - log p(z)];  ``test_log_likelihood`` E_q[log p(x|z)]
* ``active_units``  #{d : Cov_x(E_q[z_d]) > threshold} (Burda et al. 2016, threshold 0.01)
* ``ess_fraction``  mean effective sample size of the importance weights over S
* ``test_ppl``   text: exp(sum of NLL / number of tokens), </s> included (per-word perplexity)
* ``test_bits_per_dim``  discretized images: test_nll / (D ln 2)
* ``exact_nll``  -log p_theta(x) in closed form where the model family has it (linear_gaussian)
* ``true_nll``   NLL under the data-generating model where the dataset knows it

Per test point (``points.parquet`` beside metrics.json, for paired comparisons between methods scored on
the same points): ``point`` (the index in the test split), ``log_px`` and ``elbo``, float64.
The job also draws the cell's reconstructions and samples (benchmarks/figures.py). Inference time is not
measured here: jobs run side by side, so it is measured by the timing stage (benchmarks/timing.py).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field

from . import provenance
from .datasets import DataSplits
from .estimators import chunk_size, importance_sample
from .figures import draw
from .io import atomic_path
from .options import Options
from .runtime import build_trained, model_checksum, seed_everything

EVAL_VERSION = 3


class EvalConfig(Options):
    is_samples: int = Field(1000, ge=1)
    batch_size: int = Field(100, ge=1)
    max_chunk_elements: int = Field(1 << 20, ge=1)  # ~4 MB of decoder output per chunk: stays in cache
    max_test_points: Optional[int] = Field(None, ge=1)
    active_unit_threshold: float = Field(0.01, ge=0)


def evaluate(method, data: DataSplits, cfg: EvalConfig, device: torch.device) -> tuple[dict, dict]:
    """Test metrics of a trained method and its per-point estimates (see module docstring)."""
    model = method.model
    method.eval()
    log_px, elbos, log_liks, kls, ess, means, exact = [], [], [], [], [], [], []
    tokens = 0
    for x in data.batches("test", cfg.batch_size, device=device, limit=cfg.max_test_points):
        if data.modality == "sequence":
            tokens += int((x >= 0).sum())
        with torch.no_grad():  # methods that optimize at test time enable gradients inside
            posterior = method.posterior(x)
        chunk = chunk_size(cfg.is_samples, x.shape[0], model.output_elements(), cfg.max_chunk_elements)
        est = importance_sample(model, posterior, x, cfg.is_samples, chunk)
        log_px.append(est.log_px)
        elbos.append(est.elbo)
        log_liks.append(est.log_likelihood)
        kls.append(est.kl)
        ess.append(est.ess)
        with torch.no_grad():
            means.append(posterior.mean().double())
            exact_lp = model.exact_log_marginal(x)
        if exact_lp is not None:
            exact.append(exact_lp.double())
    log_px_all = torch.cat(log_px)
    n = log_px_all.numel()
    mean_z = torch.cat(means)
    active = int((mean_z.var(0, unbiased=True) > cfg.active_unit_threshold).sum()) if n > 1 else 0
    n_model = sum(p.numel() for p in model.parameters())
    n_inference = sum(p.numel() for p in method.inference_parameters())
    metrics = {
        "test_nll": float(-log_px_all.mean()),
        "test_nll_sem": float(log_px_all.std() / n**0.5) if n > 1 else 0.0,
        "test_elbo": float(torch.cat(elbos).mean()),
        "test_log_likelihood": float(torch.cat(log_liks).mean()),
        "test_kl": float(torch.cat(kls).mean()),
        "ess_fraction": float(torch.cat(ess).mean() / cfg.is_samples),
        "active_units": active,
        "latent_dim": model.latent_dim,
        "params_inference": n_inference,
        "params_model": n_model,
        "n_test": n,
        "is_samples": cfg.is_samples,
    }
    if exact:
        metrics["exact_nll"] = float(-torch.cat(exact).mean())
    if data.modality == "sequence":  # per-word perplexity, </s> counted as a word
        metrics["test_ppl"] = math.exp(float(-log_px_all.sum()) / tokens)
        metrics["tokens_per_sequence"] = tokens / n
    if data.meta.get("bits_per_dim"):
        metrics["test_bits_per_dim"] = metrics["test_nll"] / (data.x_dim * math.log(2.0))
    if "true_nll" in data.meta and cfg.max_test_points is None:
        metrics["true_nll"] = float(data.meta["true_nll"])
    points = {"point": torch.arange(n), "log_px": log_px_all.cpu(), "elbo": torch.cat(elbos).cpu()}
    return metrics, points


def test_fingerprint(data: DataSplits, n: int) -> str:
    """sha256 of the first n test points as stored: paired statistics only pair cells with equal ones."""
    return hashlib.sha256(data.split("test")[:n].contiguous().numpy().tobytes()).hexdigest()[:16]


def write_points(path: Path, points: dict, metadata: dict) -> None:
    """The per-test-point estimates as a small parquet file (atomically), `metadata` (the cell's identity
    and eval hash) in its schema so that the file says what it belongs to."""
    table = pa.table({k: v.numpy() for k, v in points.items()})
    table = table.replace_schema_metadata({k: str(v) for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def run_evaluation(cell: dict, model_file: Path, data: DataSplits, device: torch.device,
                   points_file: Path, reconstructions: Path, samples: Path) -> dict:
    """Evaluate a trained cell with its `eval:` options; write its per-point estimates and figures and
    return the metrics.json payload."""
    cfg = EvalConfig.parse(cell["eval"], "eval")
    method, saved = build_trained(cell, data, device, model_file)
    seed_everything(cell["seed"] + 1, cell["deterministic"], device)
    metrics, points = evaluate(method, data, cfg, device)
    write_points(points_file, points, {"dataset": cell["dataset"], "method": cell["method"], "seed": cell["seed"],
                                       "eval_hash": cell["hashes"]["eval"]})
    draw(method, data, reconstructions, samples)
    meta = saved.meta
    training = {k: meta.get(k) for k in ("train_seconds", "best_epoch", "epochs_run", "epochs_planned",
                                         "decoder_updates", "stopped_by", "resumed_with", "best_valid_elbo")}
    metrics.update(train_seconds=meta["train_seconds"], best_epoch=meta["best_epoch"],
                   epochs_run=meta["epochs_run"], best_valid_elbo=meta["best_valid_elbo"],
                   decoder_updates=meta.get("decoder_updates", 0))
    return {
        "dataset": cell["dataset"],
        "method": cell["method"],
        "seed": cell["seed"],
        "metrics": metrics,
        "training": training,
        "notes": method.description(),
        "eval_config": cfg.to_dict(),
        "eval_version": EVAL_VERSION,
        "history": meta["history"],
        "hashes": cell["hashes"],
        "model_sha256": model_checksum(model_file),
        "test_points": {"n": metrics["n_test"], "fingerprint": test_fingerprint(data, metrics["n_test"])},
        "data_source": data.meta.get("source") or f"generated ({cell['dataset_kind']}, seed {cell['data'].get('seed')})",
        "determinism": meta.get("determinism"),
        "provenance": provenance.record(device, cell["seed"], cell["hashes"]["train"]),
        "cell": cell,
    }
