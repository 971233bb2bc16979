"""Training loop: exact resume after an interruption, NaN handling, model selection, schedules."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks import models
from benchmarks.errors import TrainingDiverged
from benchmarks.runtime import load_checkpoint, seed_everything
from benchmarks.errors import ConfigError
from benchmarks.train import ResumeOverride, TrainConfig, Warmup, train
from methods import build_method

CFG = {"epochs": 4, "batch_size": 50, "lr": 0.01, "valid_samples": 2}


def fresh_method(data, seed=0):
    seed_everything(seed)
    return build_method("avi", models.build(data, {"encoder_hidden": [8]}))


def run(data, state_dir, cfg=CFG, method=None, train_hash="h"):
    method = method or fresh_method(data)
    result = train(method, data, TrainConfig.parse(cfg, "train"), seed=0, device=torch.device("cpu"),
                   state_dir=state_dir, train_hash=train_hash, progress=False)
    return method, result


class Interrupt(Exception):
    pass


def test_interrupted_training_resumes_to_the_same_result(lg_data, tmp_path):
    _, straight = run(lg_data, tmp_path / "straight")

    method = fresh_method(lg_data)
    original = method.on_epoch_start

    def crash_at_epoch_2(epoch):
        if epoch == 2:
            raise Interrupt
        original(epoch)

    method.on_epoch_start = crash_at_epoch_2
    with pytest.raises(Interrupt):
        run(lg_data, tmp_path / "resumed", method=method)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt", "h")["epoch"] == 1

    _, resumed = run(lg_data, tmp_path / "resumed", method=fresh_method(lg_data, seed=99))
    assert resumed.resumed_from_epoch == 2
    assert [h["valid_elbo"] for h in resumed.history] == [h["valid_elbo"] for h in straight.history]
    for key, value in straight.best_state.items():
        assert torch.equal(value, resumed.best_state[key]), key


def test_checkpoint_of_another_config_is_not_resumed(lg_data, tmp_path):
    run(lg_data, tmp_path, train_hash="one")
    _, result = run(lg_data, tmp_path, train_hash="two")
    assert result.resumed_from_epoch == 0 and len(result.history) == CFG["epochs"]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(lg_data, tmp_path):
    method = fresh_method(lg_data)
    real_loss = method.loss

    def loss(x, step):
        value = real_loss(x, step)
        return value * float("nan") if step.epoch == 2 else value

    method.loss = loss
    with pytest.raises(TrainingDiverged, match=r"epoch 2.*last good checkpoint .*last\.pt \(epoch 1\)"):
        run(lg_data, tmp_path, method=method)
    checkpoint = load_checkpoint(tmp_path / "last.pt", "h")
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["method"].values() if v.is_floating_point())


def test_best_validation_epoch_is_selected(lg_data, tmp_path):
    method, result = run(lg_data, tmp_path, cfg={**CFG, "epochs": 6})
    valid = [h["valid_elbo"] for h in result.history]
    assert result.best_epoch == max(range(len(valid)), key=valid.__getitem__)
    assert result.best_valid_elbo == max(valid)
    assert valid[-1] > valid[0]  # it learns


def test_patience_stops_early(lg_data, tmp_path):
    _, result = run(lg_data, tmp_path, cfg={**CFG, "epochs": 50, "lr": 1e-9, "patience": 1})
    assert len(result.history) < 50


def test_iwae_schedule():
    cfg = TrainConfig(schedule="iwae", iwae_stages=8)
    factors = [cfg.lr_factor(e) for e in range(3280)]
    assert factors[0] == 1.0
    assert factors[1] == factors[3] == pytest.approx(10 ** (-1 / 7))
    assert factors[4] == pytest.approx(10 ** (-2 / 7))
    assert factors[3279] == pytest.approx(0.1)
    assert sum(1 for f in factors if f == factors[3279]) == 3**7


def test_warmup_weights():
    warm = Warmup(kind="kl", epochs=10, start=0.1)
    assert warm.weight(0) == pytest.approx(0.1)
    assert warm.weight(5) == pytest.approx(0.55)
    assert warm.weight(10) == warm.weight(30) == 1.0
    assert Warmup().weight(0) == 1.0


def test_kl_warmup_reaches_the_loss(lg_data):
    from methods.base import Step

    method = fresh_method(lg_data)
    x = lg_data.test[:20]
    values = {}
    for beta in (0.0, 1.0):
        torch.manual_seed(0)
        values[beta] = float(method.loss(x, Step(kl_weight=beta, entropy_weight=beta)))
    torch.manual_seed(0)
    terms_model = method.model
    posterior = method.posterior(x)
    z, log_q = posterior.sample(1)
    kl = float((log_q - terms_model.log_prior(z)).mean())
    assert values[1.0] - values[0.0] == pytest.approx(kl, rel=1e-4)
    assert math.isfinite(values[0.0])


def test_method_without_trainable_parameters_is_evaluated_not_trained(lg_data, tmp_path):
    model = models.build(lg_data, {"fixed_to_truth": True})
    method = build_method("svi", model, {"steps": 5, "lr": 0.05})
    _, result = run(lg_data, tmp_path, method=method)
    assert len(result.history) == 1 and math.isfinite(result.best_valid_elbo)
    assert not (tmp_path / "last.pt").exists()


def test_a_loss_that_grows_by_orders_of_magnitude_is_divergence(lg_data, tmp_path):
    """No NaN needed: SGD that blows the loss up to ~1e7 stops with the divergence message."""
    method = fresh_method(lg_data)
    real_loss = method.loss

    def loss(x, step):
        value = real_loss(x, step)
        return value * 1e6 if step.epoch >= 2 else value

    method.loss = loss
    with pytest.raises(TrainingDiverged, match=r"diverged: the mean loss of epoch 2 .* more than 1000 times"):
        run(lg_data, tmp_path, method=method)
    assert load_checkpoint(tmp_path / "last.pt", "h")["epoch"] == 1


def test_resume_override_continues_from_the_last_good_checkpoint(lg_data, tmp_path):
    """The advice after a NaN works: a smaller lr, given as a resume override (not part of the cell's
    identity), resumes from the last good epoch instead of starting over, and is recorded."""
    method = fresh_method(lg_data)
    real_loss = method.loss
    method.loss = lambda x, step: real_loss(x, step) * (float("nan") if step.epoch == 2 else 1.0)
    with pytest.raises(TrainingDiverged, match="resume: {lr"):
        run(lg_data, tmp_path, method=method)
    method = fresh_method(lg_data, seed=5)
    result = train(method, lg_data, TrainConfig.parse(CFG, "train"), seed=0, device=torch.device("cpu"),
                   state_dir=tmp_path, train_hash="h", progress=False, resume=ResumeOverride(lr=1e-3))
    assert result.resumed_from_epoch == 2 and len(result.history) == CFG["epochs"]
    assert result.resumed_with == {"after_epoch": 1, "lr": 1e-3}
    assert result.history[-1]["lr"] == pytest.approx(1e-3)


def test_wall_clock_budget_stops_at_the_first_epoch_boundary_past_it(lg_data, tmp_path):
    cfg = {**CFG, "epochs": 50, "budget": {"kind": "wall_clock", "seconds": 1e-6}}
    _, result = run(lg_data, tmp_path, cfg=cfg)
    assert len(result.history) == 1 and result.stopped_by == "wall_clock" and result.epochs_planned == 50
    with pytest.raises(ConfigError, match="needs seconds"):
        TrainConfig.parse({"budget": {"kind": "wall_clock"}}, "train")


def test_decoder_updates_count_the_steps_that_train_the_generative_model(lg_data, tmp_path):
    _, result = run(lg_data, tmp_path)
    batches = math.ceil(lg_data.train.shape[0] / CFG["batch_size"])
    assert result.decoder_updates == CFG["epochs"] * batches
    assert [h["decoder_updates"] for h in result.history] == [batches * (e + 1) for e in range(CFG["epochs"])]
    frozen = build_method("avi", models.build(lg_data, {"fixed_to_truth": True}))
    _, result = run(lg_data, tmp_path / "frozen", method=frozen)
    assert result.decoder_updates == 0 and len(result.history) == CFG["epochs"]


def test_no_host_sync_per_training_step(lg_data, tmp_path, monkeypatch):
    """The loss is checked on the host every check_every steps and once per epoch, not at every step
    (a float() or bool() of a device tensor forces a GPU sync)."""
    calls = {"n": 0}
    for name in ("__bool__", "__float__", "item"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real):
            calls["n"] += 1
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    # SGD: Adam reads its per-parameter step counters with .item(), which are host tensors even on a GPU
    cfg = {**CFG, "epochs": 1, "batch_size": 3, "check_every": 25, "valid_batch_size": 500, "optimizer": "sgd"}
    run(lg_data, tmp_path, cfg=cfg)
    steps = math.ceil(lg_data.train.shape[0] / 3)  # 100 steps
    assert steps == 100 and calls["n"] <= 100 // 25 + 10, calls  # a few per epoch, not one per step
