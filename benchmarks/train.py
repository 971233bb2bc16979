"""Training: fit theta and the method's parameters on train, select on the validation ELBO.

* Budget (``train.budget``): ``epochs`` (default) trains ``train.epochs`` epochs; ``wall_clock`` trains
  until the first epoch boundary past ``budget.seconds`` (``epochs`` is then the cap). The suite gives
  every method of a dataset the same budget; a method that costs more per epoch costs more time.
  The result records epochs run, decoder updates (optimizer steps in which the generative model got a
  gradient), training seconds and what stopped training.
* Seeded and device-agnostic; data order and dynamic binarization come from a generator seeded by
  (seed, epoch), and the global RNG state is checkpointed, so a resumed run continues exactly.
* Optimizer Adam (or SGD) with a learning-rate schedule: ``constant`` or ``iwae`` (Burda et al. 2016:
  lr = lr0 * 10^(-i / (stages - 1)) for 3^i epochs, i = 0 .. stages - 1).
* Warm-up (``warmup.kind``): ``kl`` scales log p(z) - log q by beta, ``entropy`` scales only -log q
  (Cremer et al. 2018); beta rises linearly from ``warmup.start`` to 1 over ``warmup.epochs``.
* Model selection: the state with the best validation ELBO (beta = 1) is the result.
* A checkpoint is written atomically after every epoch into ``state_dir`` and resumed on rerun if the
  cell's training hash matches. No host sync on the hot path: the loss is summed on the device, checked
  for NaN/inf every ``check_every`` steps and at the end of each epoch. A non-finite loss, or an epoch
  loss that grew beyond ``divergence_factor`` times the first epoch's, stops training with a clear
  message; the last good checkpoint stays on disk, and ``resume`` overrides (a smaller lr, a gradient
  clip) that do not change the cell's identity let the rerun continue from it.
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
from pydantic import Field, model_validator

from methods import build_method
from methods.base import Step

from . import models
from .datasets import DataSplits
from .errors import TrainingDiverged
from .estimators import elbo
from .io import write_text
from .options import Options
from .runtime import (load_checkpoint, recurrent_guard_record, rng_state, save_checkpoint, save_model,
                      seed_everything, set_rng_state)

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


class Budget(Options):
    """How much training each method of a dataset gets (the same for all, unless a row says otherwise)."""

    kind: Literal["epochs", "wall_clock"] = "epochs"
    seconds: Optional[float] = Field(None, gt=0)  # wall_clock: stop at the first epoch boundary past this

    @model_validator(mode="after")
    def _seconds_for_wall_clock(self):
        if self.kind == "wall_clock" and self.seconds is None:
            raise ValueError("a wall_clock budget needs seconds")
        return self

    def describe(self, epochs: int) -> str:
        if self.kind == "wall_clock":
            return f"{self.seconds:g} s of training (at most {epochs} epochs)"
        return f"{epochs} epochs"


class ResumeOverride(Options):
    """Applied only when training resumes from a checkpoint (after a divergence, say); not part of the
    cell's identity, so the rerun resumes instead of starting over. Recorded with the result."""

    lr: Optional[float] = Field(None, gt=0)
    grad_clip: Optional[float] = Field(None, gt=0)
    reset_optimizer: bool = True  # start momentum buffers / Adam moments afresh: a diverging run's may be huge


class TrainConfig(Options):
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(100, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    adam_eps: float = Field(1e-8, gt=0)  # Adam's epsilon (Cremer et al.'s code: 1e-4)
    momentum: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "iwae"] = "constant"
    iwae_stages: int = Field(8, ge=1)
    grad_clip: Optional[float] = Field(None, gt=0)
    warmup: Warmup = Warmup()
    valid_samples: int = Field(1, ge=1)
    valid_batch_size: int = Field(500, ge=1)
    patience: Optional[int] = Field(None, ge=1)  # stop after this many epochs without a better valid ELBO
    budget: Budget = Budget()
    divergence_factor: float = Field(1e3, gt=1)  # an epoch loss beyond this x |first epoch's| (min 1) diverged
    check_every: int = Field(50, ge=1)  # steps between host checks of the loss (no sync per step)

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
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for x in data.batches("valid", cfg.valid_batch_size, device=device):
        with torch.no_grad():
            bound = elbo(method.model, method.posterior(x), x, cfg.valid_samples)
        total += bound.double().sum()
        count += x.shape[0]
    method.train()
    return float(total) / count


def make_optimizer(method, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in method.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


@dataclass
class TrainResult:
    best_state: dict
    best_epoch: int
    best_valid_elbo: float
    history: list[dict]
    train_seconds: float
    resumed_from_epoch: int
    epochs_planned: int = 0
    decoder_updates: int = 0
    stopped_by: str = "epochs"  # epochs | wall_clock | patience | nothing_to_train
    resumed_with: Optional[dict] = None


def _diverged(message: str, epoch: int, checkpoint_path: Path) -> TrainingDiverged:
    if epoch == 0:
        return TrainingDiverged(f"{message}; lower train.lr or set train.grad_clip and rerun")
    return TrainingDiverged(
        f"{message}; the last good checkpoint {checkpoint_path} (epoch {epoch - 1}) is kept. To resume from it "
        "with a smaller step, add `resume: {lr: <smaller lr>}` (and/or `grad_clip: <norm>`) to the config "
        "(globally or in the dataset entry): it does not change the cell's identity, so the rerun resumes "
        "from that checkpoint. Or change train.lr / train.grad_clip to start over.")


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
    resume: Optional[ResumeOverride] = None,
) -> TrainResult:
    """Train `method` (which holds the model) on `data`; resumable through `state_dir/last.pt`."""
    method.to(device)
    total_epochs = method.train_epochs(cfg.epochs)
    if not any(p.requires_grad for p in method.parameters()):
        # e.g. SVI on a fixed generator: inference is all test-time work, nothing to fit
        valid = validation_elbo(method, data, cfg, device)
        log.info("no trainable parameters: nothing to train (valid ELBO %.4f)", valid)
        history = [{"epoch": 0, "train_loss": float("nan"), "valid_elbo": valid, "lr": 0.0, "beta": 1.0,
                    "seconds": 0.0, "decoder_updates": 0}]
        return TrainResult(copy.deepcopy(method.state_dict()), 0, valid, history, 0.0, 0, total_epochs, 0,
                           "nothing_to_train")
    optimizer = make_optimizer(method, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_factor)
    checkpoint_path = state_dir / "last.pt"
    history: list[dict] = []
    best_state, best_epoch, best_valid = None, -1, -math.inf
    start_epoch, elapsed, decoder_updates, first_loss, resumed_with = 0, 0.0, 0, None, None
    grad_clip = cfg.grad_clip

    checkpoint = load_checkpoint(checkpoint_path, train_hash)
    if checkpoint is not None:
        method.load_state_dict(checkpoint["method"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"])
        history = checkpoint["history"]
        best_state, best_epoch = checkpoint["best_state"], checkpoint["best_epoch"]
        best_valid, elapsed = checkpoint["best_valid_elbo"], checkpoint["train_seconds"]
        decoder_updates, first_loss = checkpoint["decoder_updates"], checkpoint["first_loss"]
        resumed_with = checkpoint.get("resumed_with")
        start_epoch = checkpoint["epoch"] + 1
        log.info("resumed from %s after epoch %d", checkpoint_path, checkpoint["epoch"])
        if resume is not None and (resume.lr or resume.grad_clip) and start_epoch < total_epochs:
            if resume.reset_optimizer:
                optimizer.state.clear()
            if resume.lr:
                scheduler.base_lrs = [resume.lr for _ in optimizer.param_groups]
                for group in optimizer.param_groups:
                    group["lr"] = resume.lr * cfg.lr_factor(start_epoch)
            override = {k: v for k, v in resume.to_dict().items() if v is not None and k != "reset_optimizer"}
            resumed_with = {"after_epoch": start_epoch - 1, **override}
            log.info("resume override from epoch %d on: %s", start_epoch, override)
        if resumed_with and resumed_with.get("grad_clip"):
            grad_clip = resumed_with["grad_clip"]
    resumed_from = start_epoch

    bar = _progress(range(start_epoch, total_epochs), total_epochs, start_epoch, progress)
    n_train = data.train.shape[0]
    batches_per_epoch = math.ceil(n_train / cfg.batch_size)
    decoder = [p for p in method.model.parameters() if p.requires_grad]
    stale, stopped_by = 0, "epochs"
    method.train()
    for epoch in bar:
        t0 = time.perf_counter()
        method.on_epoch_start(epoch)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per step
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        count, checked = 0, 0
        for i, x in enumerate(data.batches("train", cfg.batch_size, shuffle=True, generator=generator, device=device)):
            beta = cfg.warmup.weight(epoch, i / batches_per_epoch)
            step = Step(
                epoch=epoch,
                iteration=epoch * batches_per_epoch + i,
                kl_weight=beta if cfg.warmup.kind == "kl" else 1.0,
                entropy_weight=beta if cfg.warmup.kind in ("kl", "entropy") else 1.0,
            )
            loss = method.loss(x, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(method.parameters(), grad_clip)
            optimizer.step()
            value = loss.detach()
            loss_sum += value.double() * x.shape[0]
            nonfinite |= ~torch.isfinite(value)
            count += x.shape[0]
            decoder_updates += any(p.grad is not None for p in decoder)
            if (i + 1) % cfg.check_every == 0:
                if bool(nonfinite):  # the one host sync every check_every steps
                    raise _diverged(f"training loss became NaN or infinite at epoch {epoch}, between batch "
                                    f"{checked} and batch {i}", epoch, checkpoint_path)
                checked = i + 1
        if bool(nonfinite):
            raise _diverged(f"training loss became NaN or infinite at epoch {epoch}, between batch {checked} "
                            "and the epoch's end", epoch, checkpoint_path)
        train_loss = float(loss_sum) / count
        if first_loss is None:
            first_loss = train_loss
        elif abs(train_loss) > cfg.divergence_factor * max(abs(first_loss), 1.0):
            raise _diverged(f"training diverged: the mean loss of epoch {epoch} is {train_loss:.4g}, more than "
                            f"{cfg.divergence_factor:g} times the first epoch's ({first_loss:.4g})",
                            epoch, checkpoint_path)
        scheduler.step()
        valid = validation_elbo(method, data, cfg, device)
        if not math.isfinite(valid):
            raise _diverged(f"validation ELBO became {valid} after epoch {epoch}", epoch, checkpoint_path)
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
                "train_loss": train_loss,
                "valid_elbo": valid,
                "lr": optimizer.param_groups[0]["lr"],
                "beta": cfg.warmup.weight(epoch + 1),
                "seconds": elapsed,
                "decoder_updates": decoder_updates,
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
                "decoder_updates": decoder_updates,
                "first_loss": first_loss,
                "resumed_with": resumed_with,
            },
        )
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{train_loss:.2f}", valid_elbo=f"{valid:.2f}")
        log.info("epoch %d: train loss %.4f, valid ELBO %.4f%s", epoch, train_loss, valid,
                 " (best)" if improved else "")
        if cfg.patience is not None and stale >= cfg.patience:
            log.info("no better valid ELBO for %d epochs: stopping early", stale)
            stopped_by = "patience"
            break
        if cfg.budget.kind == "wall_clock" and elapsed >= cfg.budget.seconds:
            log.info("wall-clock budget of %.0f s reached after epoch %d", cfg.budget.seconds, epoch)
            stopped_by = "wall_clock"
            break
    return TrainResult(best_state, best_epoch, best_valid, history, elapsed, resumed_from, total_epochs,
                       decoder_updates, stopped_by, resumed_with)


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
    determinism = seed_everything(cell["seed"], cell["deterministic"], device)
    cfg = TrainConfig.parse(cell["train"], "train")
    model = models.build(data, cell["model"])
    method = build_method(cell["method"], model, cell["method_config"])
    train_hash = cell["hashes"]["train"]
    result = train(method, data, cfg, seed=cell["seed"], device=device, state_dir=state_dir,
                   train_hash=train_hash, progress=progress,
                   resume=ResumeOverride.parse(cell.get("resume"), "resume"))
    write_text(log_csv, history_csv(result.history))
    save_model(out_model, result.best_state, {
        "train_hash": train_hash,
        "cell": {k: cell[k] for k in TRAINING_KEYS},
        "best_epoch": result.best_epoch,
        "best_valid_elbo": result.best_valid_elbo,
        "epochs_run": len(result.history) if result.stopped_by != "nothing_to_train" else 0,
        "epochs_planned": result.epochs_planned,
        "decoder_updates": result.decoder_updates,
        "stopped_by": result.stopped_by,
        "train_seconds": result.train_seconds,
        "resumed_from_epoch": result.resumed_from_epoch,
        "resumed_with": result.resumed_with,
        "history": result.history,
        "device": str(device),
        "determinism": determinism,
        "recurrent_guard": recurrent_guard_record(model, device),
    })
    return result


#: the parts of a resolved cell that determine the trained model (their hash names it)
TRAINING_KEYS = ("dataset", "dataset_kind", "method", "seed", "device", "deterministic", "data", "model",
                 "method_config", "train")
