"""GPU correctness guards, checked on the CPU with fakes at the device boundary.

* cuDNN guard: every SVI / SA-VAE refinement (test-time posterior, exact and finite-difference training
  losses, the finite-difference backward pass) and iterative's eval-mode gradients run a *recurrent*
  model with cuDNN off on CUDA, and leave cuDNN alone for non-recurrent models, on the CPU, and outside
  the refinement. CUDA is faked by patching the guard's one device check (``methods._refinement.on_cuda``);
  a spy on the model's ``log_likelihood`` (the decoder's forward) records ``torch.backends.cudnn.enabled``
  at every call.
* Determinism record: ``in_force`` is False whenever CUDA is (or will be) in use without a deterministic
  CUBLAS_WORKSPACE_CONFIG set before CUDA started; ``torch.cuda.is_initialized`` and the environment are
  patched.
"""
from __future__ import annotations

import os

import pytest
import torch

from benchmarks import runtime
from benchmarks.models import BernoulliMLP, BernoulliMLPOptions, LSTMCategorical, LSTMCategoricalOptions
from methods import _refinement, build_method
from methods.base import Step

STEPS = 3
ON, OFF = True, False

# --------------------------------------------------------------------------------------------------
# fixtures: a tiny LSTM decoder (z into inputs and initial state) and a tiny MLP decoder


def lstm_model() -> LSTMCategorical:
    torch.manual_seed(0)
    return LSTMCategorical(12, LSTMCategoricalOptions(latent_dim=2, embed_dim=6, hidden=6))


def mlp_model() -> BernoulliMLP:
    torch.manual_seed(0)
    return BernoulliMLP(10, BernoulliMLPOptions(latent_dim=2, hidden=(8,)))


def batch_for(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if isinstance(model, LSTMCategorical):
        return torch.randint(0, 12, (4, 5), generator=g)
    return torch.bernoulli(torch.full((4, 10), 0.4), generator=g)


MODELS = {"lstm": lstm_model, "mlp": mlp_model}


@pytest.fixture(autouse=True)
def _cudnn_restored():
    before = torch.backends.cudnn.enabled
    yield
    assert torch.backends.cudnn.enabled == before, "a guard left cuDNN switched"


@pytest.fixture
def fake_cuda(monkeypatch):
    """Every tensor and device counts as CUDA for the guard's decision (the kernels stay on the CPU)."""
    monkeypatch.setattr(_refinement, "on_cuda", lambda where: True)


def spy(monkeypatch, model) -> list[bool]:
    """torch.backends.cudnn.enabled as seen by each call of the decoder."""
    seen: list[bool] = []
    original = model.log_likelihood

    def log_likelihood(x, z):
        seen.append(torch.backends.cudnn.enabled)
        return original(x, z)

    monkeypatch.setattr(model, "log_likelihood", log_likelihood)
    return seen


def method_on(name: str, model, **options):
    defaults = {"svi": {"steps": STEPS, "lr": 0.05}, "savae": {"steps": STEPS, "lr": 0.05},
                "iterative": {"iterations": STEPS, "test_iterations": STEPS, "hidden": [8]}}[name]
    torch.manual_seed(0)
    return build_method(name, model, {**defaults, **options})


# --------------------------------------------------------------------------------------------------
# the decision


def test_decision_is_cuda_and_recurrent():
    lstm, mlp = lstm_model(), mlp_model()
    assert lstm.recurrent and not mlp.recurrent
    assert _refinement.needs_cudnn_off(lstm, torch.device("cuda"))
    assert _refinement.needs_cudnn_off(lstm, "cuda:1")
    assert not _refinement.needs_cudnn_off(lstm, torch.zeros(2))  # a CPU tensor
    assert not _refinement.needs_cudnn_off(lstm, torch.empty(2, device="meta"))
    assert not _refinement.needs_cudnn_off(mlp, torch.device("cuda"))
    assert runtime.needs_cudnn_off is _refinement.needs_cudnn_off  # one guard, re-exported by runtime
    assert runtime.cudnn_disabled is _refinement.cudnn_disabled


def test_cudnn_disabled_restores_the_flag_even_on_error():
    with runtime.cudnn_disabled(False):
        assert torch.backends.cudnn.enabled
    with pytest.raises(RuntimeError):
        with runtime.cudnn_disabled():
            assert not torch.backends.cudnn.enabled
            raise RuntimeError("boom")
    assert torch.backends.cudnn.enabled


def test_recurrent_guard_record_for_provenance():
    lstm, mlp = lstm_model(), mlp_model()
    record = runtime.recurrent_guard_record(lstm, "cuda")
    assert record == {"model_recurrent": True, "device_type": "cuda", "cudnn_off_for_recurrent_gradients": True,
                      "cudnn_enabled_elsewhere": torch.backends.cudnn.enabled}
    assert not runtime.recurrent_guard_record(mlp, "cuda")["cudnn_off_for_recurrent_gradients"]
    cpu = runtime.recurrent_guard_record(lstm, torch.device("cpu"))
    assert not cpu["cudnn_off_for_recurrent_gradients"] and cpu["cudnn_enabled_elsewhere"] is None


# --------------------------------------------------------------------------------------------------
# the guard is taken in every refinement, and only there


@pytest.mark.parametrize("name", ["svi", "savae"])
@pytest.mark.parametrize("kind, cuda, expected", [("lstm", True, OFF), ("mlp", True, ON), ("lstm", False, ON)])
def test_test_time_refinement(name, kind, cuda, expected, monkeypatch, request):
    """svi / savae posterior in eval mode under no_grad (evaluate, timing, gaps, validation)."""
    if cuda:
        request.getfixturevalue("fake_cuda")
    model = MODELS[kind]()
    method = method_on(name, model).eval()
    seen = spy(monkeypatch, model)
    with torch.no_grad():
        method.posterior(batch_for(model))
    assert seen == [expected] * STEPS


@pytest.mark.parametrize("kind, cuda, expected", [("lstm", True, OFF), ("mlp", True, ON), ("lstm", False, ON)])
def test_svi_training_loss(kind, cuda, expected, monkeypatch, request):
    """K refinement steps under the guard, then the decoder's ELBO at lambda_K with cuDNN untouched."""
    if cuda:
        request.getfixturevalue("fake_cuda")
    model = MODELS[kind]()
    method = method_on("svi", model)
    seen = spy(monkeypatch, model)
    method.loss(batch_for(model), Step()).backward()
    assert seen == [expected] * STEPS + [ON]


@pytest.mark.parametrize("gradient", ["exact", "finite_difference"])
@pytest.mark.parametrize("kind, cuda, expected", [("lstm", True, OFF), ("mlp", True, ON), ("lstm", False, ON)])
def test_savae_training_loss(gradient, kind, cuda, expected, monkeypatch, request):
    """Exact mode: the K steps built with create_graph run guarded (the double backward then goes through
    native kernels). Finite differences: the K forward steps and the 3K decoder calls replayed in the
    backward pass (outside the forward's guard) run guarded. The outer ELBO at lambda_K is untouched."""
    if cuda:
        request.getfixturevalue("fake_cuda")
    model = MODELS[kind]()
    method = method_on("savae", model, gradient=gradient)
    seen = spy(monkeypatch, model)
    loss = method.loss(batch_for(model), Step())
    assert seen == [expected] * STEPS + [ON]
    del seen[:]
    loss.backward()
    backward_calls = 3 * STEPS if gradient == "finite_difference" else 0
    assert seen == [expected] * backward_calls
    assert all(p.grad is not None for p in method.encoder.parameters())


@pytest.mark.parametrize("kind, cuda, training, expected", [
    ("lstm", True, False, OFF),  # eval mode, recurrent, CUDA: cuDNN's RNN backward would refuse
    ("lstm", True, True, ON),  # training mode: first-order gradients, cuDNN can do them
    ("mlp", True, False, ON),  # no RNN: cuDNN stays on (convs and matmuls keep their fast kernels)
    ("lstm", False, False, ON),  # CPU
])
def test_iterative_gradients(kind, cuda, training, expected, monkeypatch, request):
    """Iterative inference's T gradients of the ELBO (posterior; in training mode, the loss)."""
    if cuda:
        request.getfixturevalue("fake_cuda")
    model = MODELS[kind]()
    method = method_on("iterative", model).train(training)
    seen = spy(monkeypatch, model)
    x = batch_for(model)
    if training:
        method.loss(x, Step()).backward()
        assert seen == [expected] * (STEPS + 1)
    else:
        with torch.no_grad():
            method.posterior(x)
        assert seen == [expected] * STEPS


def test_guarded_exact_savae_double_backward_through_an_lstm():
    """With the guard's native kernels (the CPU's here), exact SA-VAE differentiates twice through the
    LSTM and every parameter of encoder and decoder gets a finite gradient."""
    model = lstm_model()
    method = method_on("savae", model)
    method.loss(batch_for(model), Step()).backward()
    grads = [p.grad for p in method.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.lstm.weight_hh_l0.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------
# determinism


@pytest.fixture
def clean_determinism(monkeypatch):
    """No CUBLAS_WORKSPACE_CONFIG, no late setting; torch's deterministic flags restored afterwards."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(runtime, "_workspace_set_late", False)
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
    yield monkeypatch
    torch._C._set_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.backends.cudnn.benchmark = flags[2]


def fake_cuda_started(monkeypatch, started: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: started)


def test_prepare_determinism_sets_the_workspace_unless_the_user_did(clean_determinism):
    runtime.prepare_determinism(False)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    runtime.prepare_determinism(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == runtime.CUBLAS_WORKSPACE
    clean_determinism.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    runtime.prepare_determinism(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert not runtime._workspace_set_late


@pytest.mark.parametrize("workspace, cuda_started, device, in_force", [
    (None, False, None, True),  # CPU run: cuBLAS plays no part
    (None, False, "cpu", True),
    (None, True, None, False),  # CUDA started without the workspace
    (":0:0", True, None, False),  # a value that does not make cuBLAS deterministic
    (":4096:8", True, None, True),
    (":16:8", True, "cuda", True),
    (None, False, "cuda", False),  # CUDA not started yet, but this run will use it
    (":4096:8", False, "cuda", True),
])
def test_determinism_record(workspace, cuda_started, device, in_force, clean_determinism):
    if workspace is not None:
        clean_determinism.setenv("CUBLAS_WORKSPACE_CONFIG", workspace)
    fake_cuda_started(clean_determinism, cuda_started)
    record = runtime.seed_everything(0, True, device)
    assert record["in_force"] is in_force, record
    assert record["requested"] and record["cublas_workspace_config"] == workspace
    assert record["cuda_initialized"] is cuda_started and record["cudnn_benchmark"] is False
    assert record["warn_only"] is True  # ops without a deterministic kernel warn, they do not fail


def test_workspace_set_after_cuda_started_does_not_count(clean_determinism, caplog):
    fake_cuda_started(clean_determinism)
    runtime.prepare_determinism(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == runtime.CUBLAS_WORKSPACE
    assert "after CUDA had started" in caplog.text
    assert runtime.seed_everything(0, True)["in_force"] is False


def test_not_in_force_when_not_requested_or_autotuning(clean_determinism):
    assert runtime.determinism_record(False)["in_force"] is False
    runtime.seed_everything(0, True)
    torch.backends.cudnn.benchmark = True  # cuDNN autotuning picks kernels by timing: not reproducible
    assert runtime.determinism_record(True)["in_force"] is False


@pytest.mark.parametrize("name", ["lstm", "mlp"])
def test_gaps_differentiate_a_recurrent_decoder_with_cudnn_off(monkeypatch, fake_cuda, name):
    """AIS and the local optimizations take gradients through the decoder in eval mode, which cuDNN's RNN
    kernels refuse: the gaps stage runs a recurrent model on CUDA with cuDNN off, any other with it on."""
    from benchmarks.ais import AISConfig
    from benchmarks.gaps import GapConfig, inference_gaps
    from benchmarks.localopt import LocalOptimConfig

    model = MODELS[name]()
    method = build_method("avi", model, {})
    seen = spy(monkeypatch, model)
    config = GapConfig(elbo_samples=4, eval_samples=4, local=LocalOptimConfig(samples=2, check_every=2, max_steps=4),
                       ais=AISConfig(intermediate=3, chains=2, leapfrog=2))
    inference_gaps(method, batch_for(model), config)
    assert seen and set(seen) == ({OFF} if name == "lstm" else {ON})
