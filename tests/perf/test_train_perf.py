"""The training loop's overhead: one epoch of AVI through ``benchmarks.train.train`` against a bare PyTorch
loop with the same model, minibatches (same data order), optimizer and loss that does only
forward / backward / step. Target: train() / plain <= 1.1.

The Cremer / IWAE MNIST architecture (784-200-200-50), batch 100, Adam lr 1e-3, 4000 binary training
points (40 steps) and 500 validation points: the default suite's mnist5k epoch. ``train`` also evaluates the
validation ELBO and writes a checkpoint once per epoch; these are measured separately too:

* ``train``: the whole train() call for one epoch;
* ``train, no valid/ckpt``: train() with its validation ELBO and checkpoint write replaced by no-ops, i.e.
  the loop itself: optimizer and scheduler set-up, the per-batch Step, loss accumulation and finiteness
  checks, the scheduler step, the copy of the best state, the RNG state and the history;
* ``valid``: ``validation_elbo`` on the 500 validation points alone;
* ``checkpoint``: ``save_checkpoint`` of the payload train() writes after the epoch, alone: to a new file
  (as the one-epoch train() calls here do) and replacing an existing one (as every later epoch does).

All variants are interleaved round-robin in one process; every number is a per-round ratio to the plain
epoch (median and IQR over rounds). No timed assertions; the ratios print at the end (`make bench`).
"""
from __future__ import annotations

import statistics
from unittest import mock

import torch

from benchmarks import models
from benchmarks import train as train_module
from benchmarks.datasets import DataSplits
from benchmarks.runtime import save_checkpoint
from benchmarks.train import TrainConfig, train, validation_elbo
from methods import build_method
from methods.base import Step

from .conftest import BATCH, HIDDEN, LATENT
from .interleave import interleave, ratio_summary, summarize

N_TRAIN, N_VALID, SEED = 4000, 500, 0
CPU = torch.device("cpu")


def cremer_data() -> DataSplits:
    """Binary 784-d data as tests/perf/conftest.py builds it (stored as uint8, no dynamic binarization)."""
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((N_TRAIN + N_VALID, 784), 0.2), generator=g).byte()
    return DataSplits("mnist5k", "image", "bernoulli", x[:N_TRAIN], x[N_TRAIN:], x[N_TRAIN:N_TRAIN + BATCH])


def epoch_order(seed: int, epoch: int = 0) -> torch.Tensor:
    """The permutation of the training points that train() draws for `epoch`: ``data.batches`` with
    ``shuffle=True`` and a generator seeded by (seed, epoch). Checked against train() in the test."""
    return torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def test_train_epoch_vs_plain_loop(measured, report_ratio, tmp_path):
    data = cremer_data()
    cfg = TrainConfig.parse({"epochs": 1, "batch_size": BATCH, "optimizer": "adam", "lr": 1e-3}, "train")
    torch.manual_seed(0)
    method = build_method("avi", models.build(data, {"latent_dim": LATENT, "hidden": list(HIDDEN)}))
    initial = {k: v.clone() for k, v in method.state_dict().items()}
    state_dir = tmp_path / "state"

    def reset():  # untimed, before every sample: the same starting weights, no checkpoint to resume from
        method.load_state_dict(initial)
        method.train()
        (state_dir / "last.pt").unlink(missing_ok=True)

    def run_train():
        return train(method, data, cfg, seed=SEED, device=CPU, state_dir=state_dir, train_hash="perf",
                     progress=False)

    def plain_epoch():
        optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=cfg.lr)
        step = Step()
        for idx in epoch_order(SEED).split(BATCH):
            x = data.train[idx].float()
            loss = method.loss(x, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    # untimed check: the plain loop sees exactly the minibatches train() sees, in the same order
    seen: list[torch.Tensor] = []
    original_loss = method.loss

    def recording_loss(x, step):
        seen.append(x.clone())
        return original_loss(x, step)

    reset()
    with mock.patch.object(method, "loss", recording_loss):
        run_train()
    plain_batches = [data.train[idx].float() for idx in epoch_order(SEED).split(BATCH)]
    assert len(seen) == len(plain_batches) == N_TRAIN // BATCH
    assert all(torch.equal(a, b) for a, b in zip(seen, plain_batches)), \
        "train() draws its minibatches differently now: update epoch_order() in tests/perf/test_train_perf.py"

    # train() without its validation pass and checkpoint write; the payload it would write is kept
    payload: dict = {}

    def keep_payload(path, checkpoint):
        payload.clear()
        payload.update(checkpoint)

    def run_train_core():
        with mock.patch.object(train_module, "validation_elbo", lambda *args, **kwargs: 0.0), \
                mock.patch.object(train_module, "save_checkpoint", keep_payload):
            return run_train()

    reset()
    run_train_core()
    assert payload["epoch"] == 0 and "optimizer" in payload and "best_state" in payload
    checkpoint_path = tmp_path / "checkpoint" / "last.pt"  # written afresh, as by the one-epoch train() here
    overwritten_path = tmp_path / "overwritten" / "last.pt"  # replaces the previous one, as in epochs >= 1

    variants = {"plain": plain_epoch, "train": run_train, "train, no valid/ckpt": run_train_core,
                "valid": lambda: validation_elbo(method, data, cfg, CPU),
                "checkpoint": lambda: save_checkpoint(checkpoint_path, payload),
                "checkpoint, overwrite": lambda: save_checkpoint(overwritten_path, payload)}
    fresh_checkpoint = lambda: checkpoint_path.unlink(missing_ok=True)  # noqa: E731 (as train() after reset())
    times = interleave(variants, rounds=9, repeats=2, before={"plain": reset, "train": reset,
                                                              "train, no valid/ckpt": reset,
                                                              "checkpoint": fresh_checkpoint})
    plain = times["plain"]
    ms = {key: 1e3 * statistics.median(t) for key, t in times.items()}
    where = (f"one AVI epoch, {N_TRAIN} points, batch {BATCH}, 784-200-200-{LATENT}, Adam, "
             f"{torch.get_num_threads()} thread(s)")
    report_ratio(f"train() / plain loop, {where}: {ratio_summary(times['train'], plain)} (target <= 1.1; train() "
                 f"includes validation on {N_VALID} points and the checkpoint write); medians {ms['train']:.1f} "
                 f"vs {ms['plain']:.1f} ms")
    report_ratio(f"train() without validation and checkpoint / plain loop: "
                 f"{ratio_summary(times['train, no valid/ckpt'], plain)} (the loop's own overhead: optimizer and "
                 f"scheduler set-up, per-batch bookkeeping and loss checks, best-state copy, RNG state)")
    report_ratio(f"validation ELBO ({N_VALID} points, 1 sample) / plain epoch: "
                 f"{ratio_summary(times['valid'], plain).format('share', digits=3)}")
    report_ratio(f"checkpoint write ({checkpoint_path.stat().st_size / 2**20:.1f} MB) / plain epoch: new file "
                 f"{ratio_summary(times['checkpoint'], plain).format('share', digits=3)}; replacing the previous "
                 f"epoch's {ratio_summary(times['checkpoint, overwrite'], plain).format('share', digits=3)}; "
                 f"medians {ms['checkpoint']:.1f} and {ms['checkpoint, overwrite']:.1f} ms")
    residual = [(t - v - c) / p for t, v, c, p in zip(times["train"], times["valid"], times["checkpoint"], plain)]
    report_ratio(f"cross-check, (train() - validation - checkpoint, measured separately) / plain loop: "
                 f"{summarize(residual)}")
