"""Training loop: exact resume after an interruption, NaN handling, model selection, schedules."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks import models
from benchmarks.errors import TrainingDiverged
from benchmarks.runtime import load_checkpoint, seed_everything
from benchmarks.train import TrainConfig, Warmup, train
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
