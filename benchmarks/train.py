"""Training: fit theta and the method's parameters on train, select on the validation ELBO.

* Seeded and device-agnostic; data order and dynamic binarization come from a generator seeded by
  (seed, epoch), and the global RNG state is checkpointed, so a resumed run continues exactly.
* Optimizer Adam (or SGD) with a learning-rate schedule: ``constant`` or ``iwae`` (Burda et al. 2016:
  lr = lr0 * 10^(-i / (stages - 1)) for 3^i epochs, i = 0 .. stages - 1).
* Warm-up (``warmup.kind``): ``kl`` scales log p(z) - log q by beta, ``entropy`` scales only -log q
  (Cremer et al. 2018); beta rises linearly from ``warmup.start`` to 1 over ``warmup.epochs``.
* Model selection: the state with the best validation ELBO (beta = 1) is the result.
* A checkpoint is written atomically after every epoch into ``state_dir`` and resumed on rerun if the
  cell's config hash matches. A NaN/inf loss stops training with a clear message; the last good
  checkpoint stays on disk.
"""
from __future__ import annotations

import copy
import csv
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import Field

from methods import build_method
from methods.base import Step

from . import models
from .datasets import DataSplits
from .errors import TrainingDiverged
from .estimators import elbo
from .io import write_text
from .options import Options
from .runtime import load_checkpoint, rng_state, save_checkpoint, save_model, seed_everything, set_rng_state

log = logging.getLogger("amortbench.train")


class Warmup(Options):
    kind: Literal["none", "kl", "entropy"] = "none"
    epochs: int = Field(0, ge=0)
    start: float = Field(0.0, ge=0, le=1)

    def weight(self, epoch: int, iteration_fraction: float = 0.0) -> float:
        if self.kind == "none" or self.epochs <= 0:
            return 1.0
        progress = min(1.0, (epoch + iteration_fraction) / self.epochs)
        return self.start + (1.0 - self.start) * progress


class TrainConfig(Options):
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(100, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "iwae"] = "constant"
    iwae_stages: int = Field(8, ge=1)
    grad_clip: Optional[float] = Field(None, gt=0)
    warmup: Warmup = Warmup()
    valid_samples: int = Field(1, ge=1)
    valid_batch_size: int = Field(500, ge=1)
    patience: Optional[int] = Field(None, ge=1)  # stop after this many epochs without a better valid ELBO

    def lr_factor(self, epoch: int) -> float:
        if self.schedule == "constant":
            return 1.0
        boundary = 0
        for i in range(self.iwae_stages):
            boundary += 3**i
            if epoch < boundary:
                return 10.0 ** (-i / max(1, self.iwae_stages - 1))
        return 10.0 ** (-1.0)


def validation_elbo(method, data: DataSplits, cfg: TrainConfig, device: torch.device) -> float:
    """Mean ELBO (beta = 1) per validation datapoint, nats."""
    method.eval()
    total, count = 0.0, 0
    for x in data.batches("valid", cfg.valid_batch_size, device=device):
        with torch.no_grad():
            bound = elbo(method.model, method.posterior(x), x, cfg.valid_samples)
        total += float(bound.sum())
        count += x.shape[0]
    method.train()
    return total / count


def make_optimizer(method, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in method.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass
class TrainResult:
    best_state: dict
    best_epoch: int
    best_valid_elbo: float
    history: list[dict]
    train_seconds: float
    resumed_from_epoch: int


def train(
    method,
    data: DataSplits,
    cfg: TrainConfig,
    *,
    seed: int,
    device: torch.device,
    state_dir: Path,
    train_hash: str,
    progress: bool = True,
) -> TrainResult:
    """Train `method` (which holds the model) on `data`; resumable through `state_dir/last.pt`."""
    method.to(device)
    if not any(p.requires_grad for p in method.parameters()):
        # e.g. SVI on a fixed generator: inference is all test-time work, nothing to fit
        valid = validation_elbo(method, data, cfg, device)
        log.info("no trainable parameters: nothing to train (valid ELBO %.4f)", valid)
        history = [{"epoch": 0, "train_loss": float("nan"), "valid_elbo": valid, "lr": 0.0, "beta": 1.0,
                    "seconds": 0.0}]
        return TrainResult(copy.deepcopy(method.state_dict()), 0, valid, history, 0.0, 0)
    optimizer = make_optimizer(method, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_factor)
    checkpoint_path = state_dir / "last.pt"
    history: list[dict] = []
    best_state, best_epoch, best_valid = None, -1, -math.inf
    start_epoch, elapsed = 0, 0.0

    checkpoint = load_checkpoint(checkpoint_path, train_hash)
    if checkpoint is not None:
        method.load_state_dict(checkpoint["method"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"])
        history = checkpoint["history"]
        best_state, best_epoch = checkpoint["best_state"], checkpoint["best_epoch"]
        best_valid, elapsed = checkpoint["best_valid_elbo"], checkpoint["train_seconds"]
        start_epoch = checkpoint["epoch"] + 1
        log.info("resumed from %s after epoch %d", checkpoint_path, checkpoint["epoch"])
    resumed_from = start_epoch

    total_epochs = method.train_epochs(cfg.epochs)
    bar = _progress(range(start_epoch, total_epochs), total_epochs, start_epoch, progress)
    n_train = data.train.shape[0]
    batches_per_epoch = math.ceil(n_train / cfg.batch_size)
    stale = 0
    method.train()
    for epoch in bar:
        t0 = time.perf_counter()
        method.on_epoch_start(epoch)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        total, count = 0.0, 0
        for i, x in enumerate(data.batches("train", cfg.batch_size, shuffle=True, generator=generator, device=device)):
            beta = cfg.warmup.weight(epoch, i / batches_per_epoch)
            step = Step(
                epoch=epoch,
                iteration=epoch * batches_per_epoch + i,
                kl_weight=beta if cfg.warmup.kind == "kl" else 1.0,
                entropy_weight=beta if cfg.warmup.kind in ("kl", "entropy") else 1.0,
            )
            loss = method.loss(x, step)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"training loss became {float(loss)} at epoch {epoch}, batch {i}; the last good "
                    f"checkpoint {checkpoint_path} (epoch {epoch - 1}) is kept. Lower train.lr or set "
                    "train.grad_clip, then rerun to resume from it"
                    if epoch > 0
                    else f"training loss became {float(loss)} at epoch 0, batch {i}; lower train.lr or "
                    "set train.grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)
            optimizer.step()
            total += float(loss.detach()) * x.shape[0]
            count += x.shape[0]
        scheduler.step()
        valid = validation_elbo(method, data, cfg, device)
        if not math.isfinite(valid):
            raise TrainingDiverged(
                f"validation ELBO became {valid} after epoch {epoch}; the last good checkpoint "
                f"{checkpoint_path} is kept. Lower train.lr or set train.grad_clip"
            )
        elapsed += time.perf_counter() - t0
        improved = valid > best_valid and method.selectable(epoch)
        if improved:
            best_state = copy.deepcopy(method.state_dict())
            best_epoch, best_valid, stale = epoch, valid, 0
        elif method.selectable(epoch):
            stale += 1
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / count,
                "valid_elbo": valid,
                "lr": optimizer.param_groups[0]["lr"],
                "beta": cfg.warmup.weight(epoch + 1),
                "seconds": elapsed,
            }
        )
        save_checkpoint(
            checkpoint_path,
            {
                "train_hash": train_hash,
                "epoch": epoch,
                "method": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "history": history,
                "best_state": best_state,
                "best_epoch": best_epoch,
                "best_valid_elbo": best_valid,
                "train_seconds": elapsed,
            },
        )
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total / count:.2f}", valid_elbo=f"{valid:.2f}")
        log.info("epoch %d: train loss %.4f, valid ELBO %.4f%s", epoch, total / count, valid,
                 " (best)" if improved else "")
        if cfg.patience is not None and stale >= cfg.patience:
            log.info("no better valid ELBO for %d epochs: stopping early", stale)
            break
    return TrainResult(best_state, best_epoch, best_valid, history, elapsed, resumed_from)


def history_csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    if history:
        writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    return buffer.getvalue()


def _progress(iterable, total: int, initial: int, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, initial=initial, desc="epochs", unit="epoch", disable=None)


def run_training(cell: dict, data: DataSplits, out_model: Path, state_dir: Path, log_csv: Path,
                 device: torch.device, progress: bool = True) -> TrainResult:
    """Build model + method for a resolved cell, train, and write the selected model (atomically)."""
    determinism = seed_everything(cell["seed"], cell["deterministic"])
    cfg = TrainConfig.parse(cell["train"], "train")
    model = models.build(data, cell["model"])
    method = build_method(cell["method"], model, cell["method_config"])
    train_hash = cell["hashes"]["train"]
    result = train(method, data, cfg, seed=cell["seed"], device=device, state_dir=state_dir,
                   train_hash=train_hash, progress=progress)
    write_text(log_csv, history_csv(result.history))
    save_model(out_model, result.best_state, {
        "train_hash": train_hash,
        "cell": {k: cell[k] for k in TRAINING_KEYS},
        "best_epoch": result.best_epoch,
        "best_valid_elbo": result.best_valid_elbo,
        "epochs_run": len(result.history),
        "train_seconds": result.train_seconds,
        "resumed_from_epoch": result.resumed_from_epoch,
        "history": result.history,
        "device": str(device),
        "determinism": determinism,
    })
    return result


#: the parts of a resolved cell that determine the trained model (their hash names it)
TRAINING_KEYS = ("dataset", "dataset_kind", "method", "seed", "device", "deterministic", "data", "model",
                 "method_config", "train")
