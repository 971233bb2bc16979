"""Runtime: device, seeding and determinism, RNG state, and the safe file formats of trained models and
training checkpoints.

Files a user may have received from someone else (model.pt, state/last.pt) hold only tensors and plain
containers and are read with ``torch.load(weights_only=True)``: no pickled object is ever constructed,
so a crafted file cannot run code. Model files carry a sha256 sidecar like the prepared data, their
format name and the hash of the training configuration they were made from; ``load_model`` checks all
three and says how to regenerate a file that fails.
"""
from __future__ import annotations

import json
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from methods import build_method
from methods._refinement import cudnn_disabled, needs_cudnn_off, on_cuda  # noqa: F401 - re-exported

from . import models
from .datasets import DataSplits
from .datasets.core import checksum_path, sha256_of
from .errors import ConfigError, DataError
from .io import torch_save, write_text

log = logging.getLogger("amortbench.runtime")

MODEL_FORMAT = "amortbench.model/2"
CHECKPOINT_FORMAT = "amortbench.checkpoint/2"
CUBLAS_WORKSPACE = ":4096:8"


# --------------------------------------------------------------------------------------------------
# device and determinism

#: the values of CUBLAS_WORKSPACE_CONFIG under which cuBLAS is deterministic (the two torch accepts)
DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")
#: set by prepare_determinism when it had to set the variable after CUDA had started (too late to count)
_workspace_set_late = False


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when torch finds a device, else the CPU; `cuda` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but torch finds no CUDA device; use --device cpu")
    return torch.device(name)


def prepare_determinism(deterministic: bool) -> None:
    """Before the first CUDA call: cuBLAS is only deterministic with a fixed workspace
    (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS starts); set it unless the user has set it already.
    Setting it after CUDA has started is too late: that is logged and ``determinism_record`` says so."""
    global _workspace_set_late
    if not deterministic or "CUBLAS_WORKSPACE_CONFIG" in os.environ:
        return
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    if torch.cuda.is_initialized():
        _workspace_set_late = True
        log.warning("CUBLAS_WORKSPACE_CONFIG was set after CUDA had started: cuBLAS may not be deterministic "
                    "(set it in the environment, or call prepare_determinism before any CUDA work)")


def seed_everything(seed: int, deterministic: bool = True, device: Optional[torch.device | str] = None) -> dict:
    """Seed Python, NumPy and torch; with `deterministic`, ask torch for deterministic algorithms.

    Returns what is really in force, for the provenance record (``determinism_record``; pass the run's
    `device` so that a CUDA run is judged before CUDA has started)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        use_deterministic_algorithms()
        torch.backends.cudnn.benchmark = False
    return determinism_record(deterministic, device)


def use_deterministic_algorithms() -> None:
    """torch.use_deterministic_algorithms(True, warn_only=True) without its import of the whole compiler
    stack (torch._inductor, about 0.6 s per job) to set the inductor's flag: the suite compiles nothing, so
    the flag the kernels read is set directly, and the inductor's too if it is already loaded."""
    torch._C._set_deterministic_algorithms(True, warn_only=True)
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = True


def determinism_record(requested: bool, device: Optional[torch.device | str] = None) -> dict:
    """Whether determinism was requested and is in force: torch's deterministic algorithms on, cuDNN's
    benchmark (autotuning) off and, when CUDA is in use (already started, or `device` is CUDA), cuBLAS's
    workspace fixed to a deterministic value before CUDA started. ``warn_only``: ops without a
    deterministic implementation warn instead of failing (their results may still vary on CUDA).
    ``tf32``: whether CUDA convolutions / matmuls may use TF32 (reproducible, but not float32-exact)."""
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    initialized = torch.cuda.is_initialized()
    cuda_in_use = initialized or (device is not None and torch.device(device).type == "cuda")
    cublas_ok = cublas in DETERMINISTIC_CUBLAS and not (initialized and _workspace_set_late)
    in_force = bool(requested and torch.are_deterministic_algorithms_enabled()
                    and not torch.backends.cudnn.benchmark and (cublas_ok or not cuda_in_use))
    return {"requested": bool(requested), "in_force": in_force, "cublas_workspace_config": cublas,
            "cuda_initialized": initialized, "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "tf32": {"cudnn": bool(torch.backends.cudnn.allow_tf32),
                     "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}}


# cuDNN and recurrent models: the guard is defined beside the refinement code that takes it (methods sit
# below this layer) and re-exported here: `on_cuda`, `needs_cudnn_off`, `cudnn_disabled`.


def recurrent_guard_record(model, device: torch.device | str) -> dict:
    """For a stage's provenance: whether gradients through this model's recurrent kernels (SVI / SA-VAE
    refinement at training and test time; iterative's eval-mode gradients) run with cuDNN off on `device`.
    The decision is ``needs_cudnn_off``, the one the methods take."""
    device = torch.device(device)
    off = needs_cudnn_off(model, device)
    return {"model_recurrent": bool(model.recurrent), "device_type": device.type,
            "cudnn_off_for_recurrent_gradients": off,
            "cudnn_enabled_elsewhere": bool(torch.backends.cudnn.enabled) if on_cuda(device) else None}


# --------------------------------------------------------------------------------------------------
# RNG state as tensors (a checkpoint needs no pickle)


def rng_state() -> dict:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------
# safe reading


def safe_load(path: Path, what: str) -> Any:
    """torch.load with weights_only=True; anything it refuses or cannot read is a DataError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign, or a pickle payload weights_only refuses
        raise DataError(f"{what} {path} cannot be read safely ({type(exc).__name__}: {str(exc)[:300]})") from None


# --------------------------------------------------------------------------------------------------
# trained model files


@dataclass
class SavedModel:
    state: dict  # the method's state_dict
    meta: dict  # JSON metadata: train_hash, the training cell, epochs, seconds, ...


def save_model(path: Path, state: dict, meta: dict) -> None:
    """model.pt (tensors + JSON metadata) and model.pt.sha256, both written atomically."""
    torch_save(path, {"format": MODEL_FORMAT, "meta": json.dumps(meta, sort_keys=True), "state": state})
    write_text(checksum_path(path), sha256_of(Path(path)) + "\n")


def model_checksum(path: Path) -> Optional[str]:
    """The sha256 recorded beside a model file, or None when there is no sidecar."""
    sidecar = checksum_path(path)
    return sidecar.read_text().strip() if sidecar.exists() else None


def verify_model_file(path: Path) -> Optional[str]:
    """None if the model file matches its sha256 sidecar, else a sentence saying what is wrong."""
    path = Path(path)
    if not path.exists():
        return f"{path} does not exist"
    recorded = model_checksum(path)
    if recorded is None:
        return f"{path} has no checksum file {checksum_path(path)} (an older version of amortbench, or a copy)"
    if recorded != sha256_of(path):
        return f"{path} does not match its checksum {checksum_path(path)} (corrupt or truncated)"
    return None


def load_model(path: Path, train_hash: Optional[str] = None) -> SavedModel:
    """Read a model file after checking its checksum, format and (if given) the training-config hash."""
    path = Path(path)
    regenerate = f"delete {path} and {checksum_path(path)} and rerun the pipeline to retrain it"
    problem = verify_model_file(path)
    if problem:
        raise DataError(f"{problem}; {regenerate}")
    payload = safe_load(path, "model file")
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise DataError(f"{path} is not an amortbench model file of format {MODEL_FORMAT} (found {found!r}); "
                        f"{regenerate}")
    meta = json.loads(payload["meta"])
    if train_hash is not None and meta.get("train_hash") != train_hash:
        raise DataError(f"{path} was trained from another configuration (train hash {meta.get('train_hash')}, "
                        f"this cell's is {train_hash}); {regenerate}")
    return SavedModel(payload["state"], meta)


def build_trained(cell: dict, data: DataSplits, device: torch.device, model_file: Path):
    """The cell's method (generative model included) with the trained state of `model_file`, in eval mode
    on `device`; the file must have been trained from this cell's training configuration."""
    saved = load_model(model_file, cell["hashes"]["train"])
    method = build_method(cell["method"], models.build(data, cell["model"]), cell["method_config"])
    method.load_state_dict(saved.state)
    return method.to(device).eval(), saved


# --------------------------------------------------------------------------------------------------
# training checkpoints


def save_checkpoint(path: Path, payload: dict) -> None:
    torch_save(path, {"format": CHECKPOINT_FORMAT, **payload})


def load_checkpoint(path: Path, train_hash: str) -> Optional[dict]:
    """The resumable checkpoint if it exists, reads safely and belongs to this training configuration;
    otherwise None (with a warning saying why, and training starts from scratch)."""
    if not path.exists():
        return None
    try:
        checkpoint = safe_load(path, "checkpoint")
    except DataError as exc:
        log.warning("%s: starting from scratch", exc)
        return None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        log.warning("checkpoint %s has another format (an older version of amortbench?): starting from scratch",
                    path)
        return None
    if checkpoint.get("train_hash") != train_hash:
        log.warning("checkpoint %s belongs to another configuration: starting from scratch", path)
        return None
    return checkpoint
