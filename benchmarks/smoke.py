"""GPU smoke run: every method on every model family, tiny, through the real stage code, on one device.

    python -m benchmarks.smoke --device cuda [--out smoke.json]     (the first run on a new GPU, < 5 min)
    python -m benchmarks.smoke --device cpu --quick                 (CI: the same code path on the CPU)

For each registered method (SA-VAE in both gradient modes: ``savae`` exact, ``savae:fd`` finite
differences) and each model family, on data built in memory (nothing is downloaded):

* bernoulli_mlp     256 binary 28x28 images (gray levels, dynamically binarized like mnist)
* conv_image        256 random-blob 8-bit RGB images, 16x16 (discretized logistic)
* lstm_categorical  256 sequences of 5 tokens from a tiny SA-VAE synthetic oracle (z into the LSTM's
                    inputs and initial state, so every gradient of the refinement goes through the LSTM)
* linear_gaussian   256 vectors of the exactly solvable factor-analysis model

it runs ``train.train`` (2 epochs of 4 batches; recmix its own 3-epoch schedule), ``evaluate.evaluate``
(16 importance samples on 32 test points), ``gaps.inference_gaps`` (4 test points: a 10-step local
optimization, q*_family, AIS with 10 intermediate distributions) and ``timing.time_interleaved`` (batch 1
and 16, 2 rounds). A cell passes when every stage runs and its numbers are sane: finite losses, a decoder
that was updated, finite metrics with IWAE >= ELBO, finite gaps, positive times. Warnings (e.g. from ops
without a deterministic CUDA kernel) are collected per cell in the JSON.

Parity with the CPU: the same cell is run again on the CPU, without timing and q*_family (with ``--device
cpu``: a second CPU run, which checks that a run is reproducible; it then matches bit for bit). Both runs
start from the same seed, the same initial parameters (built on the CPU) and the same data order, and every
draw of noise in training, evaluation and gaps comes from the CPU generator (moved to the device:
``noise_from_cpu``), since CUDA's generator gives other numbers for the same seed. What remains is
floating point: kernels that sum in another order (cuDNN, cuBLAS). Compared (``COMPARED``): the first
epoch's training loss, the best validation ELBO, the test ELBO and NLL, the gaps' L[q], L[q*_FFG] and AIS
log p(x), each within |a - b| <= rtol |b| + atol with rtol 1e-3 and atol 1e-3 nats (``TOLERANCE``).
Looser, rtol 1e-2, where the numbers are known to differ by more than reordering: the local optimization
and AIS (their stopping rule and accept/reject steps are discontinuous in their inputs), and, with a note
on the row, convolutions on CUDA with TF32 allowed (``torch.backends.cudnn.allow_tf32``, PyTorch's
default). Inference times are not compared.

Prints a table (method, family, result, seconds on the device, the largest relative difference from the
CPU, a note), writes it as JSON with ``--out``, and exits 1 if any cell fails.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from methods import available_methods, build_method, method_class

from . import models, provenance
from .ais import AISConfig
from .datasets import DataSplits, LinearGaussianData, SyntheticOracle
from .errors import ConfigError
from .evaluate import EvalConfig, evaluate
from .gaps import GapConfig, inference_gaps
from .localopt import LocalOptimConfig
from .runtime import determinism_record, prepare_determinism, resolve_device, seed_everything
from .timing import TimingConfig, time_interleaved
from .train import TrainConfig, train

SEED = 0
N_TRAIN, N_VALID, N_TEST = 256, 64, 64
TRAIN = TrainConfig(epochs=2, batch_size=64, lr=1e-3, valid_samples=1, valid_batch_size=64)
EVAL = EvalConfig(is_samples=16, batch_size=32, max_test_points=32)
TIMING = TimingConfig(batch_size=16, rounds=2, repeats=1, warmup=1)
GAP_POINTS = 4
GAPS = GapConfig(elbo_samples=16, eval_samples=16, batch_size=GAP_POINTS, family=True, family_batch_size=GAP_POINTS,
                 local=LocalOptimConfig(lr=1e-2, samples=4, check_every=5, patience=1, max_steps=10),
                 ais=AISConfig(intermediate=10, chains=4, leapfrog=2))
#: the CPU reference skips q*_family (computed last, so the compared numbers do not depend on it)
REFERENCE_GAPS = GAPS.model_copy(update={"family": False})

#: quantities compared with the CPU run: name -> loose (True: rtol LOOSE_RTOL, see the module docstring)
COMPARED = {"train_loss_first_epoch": False, "valid_elbo_best": False, "test_elbo": False, "test_nll": False,
            "gaps_elbo_q": False, "gaps_elbo_qstar_ffg": True, "gaps_log_px_ais": True}
TOLERANCE = {"rtol": 1e-3, "atol": 1e-3}
LOOSE_RTOL = 1e-2

#: small, numerically safe method options (on top of each method's own test_config); a method may appear
#: in several variants, each a row of the table
VARIANTS: dict[str, dict[str, dict]] = {
    "svi": {"svi": {"steps": 5, "lr": 0.05}},
    "savae": {"savae": {"steps": 3, "lr": 0.05}, "savae:fd": {"steps": 3, "lr": 0.05, "gradient": "finite_difference"}},
    "iterative": {"iterative": {"iterations": 2, "test_iterations": 2, "hidden": [16]}},
    "recmix": {"recmix": {"components": 2, "stage_epochs": 1, "refine_epochs": 1}},
    "iaf": {"iaf": {"made_hidden": [16], "context_dim": 4}},
    "auxiliary": {"auxiliary": {"hidden": [16]}},
    "flow": {"flow": {"hidden": [16], "coupling_hidden": [16]}},
}
QUICK = {"methods": ["avi", "svi"], "families": ["bernoulli_mlp", "lstm_categorical"]}


# --------------------------------------------------------------------------------------------------
# data, built in memory


def _blobs(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """n gray / colour images (uint8) of a few smooth random prototypes plus pixel noise: data with
    latent structure for the models to find."""
    prototypes = torch.nn.functional.interpolate(torch.rand(6, channels, 4, 4, generator=generator), size=size,
                                                 mode="bilinear", align_corners=False)
    which = torch.randint(0, 6, (n,), generator=generator)
    images = prototypes[which] + 0.15 * torch.randn(n, channels, size, size, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def binary_images() -> DataSplits:
    g = torch.Generator().manual_seed(1)
    sizes = (("train", N_TRAIN), ("valid", N_VALID), ("test", N_TEST))
    gray = {s: _blobs(n, 1, 28, g).reshape(n, 784) for s, n in sizes}
    once = {s: torch.bernoulli(gray[s].float() / 255.0, generator=g).to(torch.uint8) for s in ("valid", "test")}
    return DataSplits("smoke_binary", "image", "bernoulli", gray["train"], once["valid"], once["test"],
                      "dynamic_binarize", {"image_shape": [1, 28, 28]})


def rgb_images() -> DataSplits:
    g = torch.Generator().manual_seed(2)
    x = {s: _blobs(n, 3, 16, g) for s, n in (("train", N_TRAIN), ("valid", N_VALID), ("test", N_TEST))}
    return DataSplits("smoke_rgb", "image", "discrete_pixels", x["train"], x["valid"], x["test"], "none",
                      {"image_shape": [3, 16, 16], "bits_per_dim": True})


def oracle_sequences() -> DataSplits:
    return SyntheticOracle(vocab_size=30, length=5, hidden=16, embed_dim=16, n_train=N_TRAIN, n_valid=N_VALID,
                           n_test=N_TEST, quadrature_points=11).build(Path("unused"))


def gaussian_vectors() -> DataSplits:
    return LinearGaussianData(x_dim=8, latent_dim=2, n_train=N_TRAIN, n_valid=N_VALID, n_test=N_TEST,
                              seed=3).build(Path("unused"))


#: family -> (its data, its model options)
FAMILY_DATA: dict[str, tuple[Callable[[], DataSplits], dict]] = {
    "bernoulli_mlp": (binary_images, {"latent_dim": 4, "hidden": [32]}),
    "conv_image": (rgb_images, {"latent_dim": 4, "channels": [8, 16], "features": 32}),
    "lstm_categorical": (oracle_sequences, {"latent_dim": 2, "embed_dim": 16, "hidden": 16}),
    "linear_gaussian": (gaussian_vectors, {"encoder_hidden": [16]}),
}


# --------------------------------------------------------------------------------------------------
# one run of a cell


@contextlib.contextmanager
def noise_from_cpu() -> Iterator[None]:
    """torch.randn / rand / randn_like / rand_like draw on the CPU (global generator, or the one given)
    and move the result to the requested device: the same seed then gives the same noise on every device."""
    originals = {name: getattr(torch, name) for name in ("randn", "rand", "randn_like", "rand_like")}

    def factory(draw):
        def drawn_on_cpu(*size, device=None, **kwargs):
            out = draw(*size, device="cpu", **kwargs)
            return out if device is None else out.to(device)
        return drawn_on_cpu

    def like(draw):
        def drawn_on_cpu(tensor, *, dtype=None, **_):
            return draw(tensor.shape, dtype=dtype or tensor.dtype, device="cpu").to(tensor.device)
        return drawn_on_cpu

    patched = {"randn": factory(originals["randn"]), "rand": factory(originals["rand"]),
               "randn_like": like(originals["randn"]), "rand_like": like(originals["rand"])}
    try:
        for name, function in patched.items():
            setattr(torch, name, function)
        yield
    finally:
        for name, function in originals.items():
            setattr(torch, name, function)


class CheckFailed(AssertionError):
    """A stage ran but its numbers are not sane."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _finite(values: dict, what: str) -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    _check(not bad, f"{what}: not finite: {bad}")


@dataclass
class Run:
    """One run of a cell on one device: the compared numbers, seconds, and the stage that failed."""

    numbers: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    timing_ms: dict[str, float] = field(default_factory=dict)
    failed_stage: Optional[str] = None
    error: Optional[str] = None
    traceback: Optional[str] = None


def run_cell(method_name: str, options: dict, family: str, data: DataSplits, device: torch.device,
             seed: int = SEED, reference: bool = False) -> Run:
    """Train, evaluate, decompose the gaps of and time one cell on `device`, checking each stage (a
    `reference` run: no timing, no q*_family)."""
    run, stage, started = Run(), "build", time.perf_counter()
    clock = started

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        run.stage_seconds[name] = round(now - clock, 3)
        clock = now

    try:
        seed_everything(seed, True, device)
        model = models.build(data, {"family": family, **FAMILY_DATA[family][1]})
        method = build_method(method_name, model, {**method_class(method_name).test_config, **options})

        with noise_from_cpu():
            stage = "train"
            with tempfile.TemporaryDirectory(prefix="amortbench-smoke-") as state:
                result = train(method, data, TRAIN, seed=seed, device=device, state_dir=Path(state),
                               train_hash="smoke", progress=False)
            method.load_state_dict(result.best_state)
            run.numbers["train_loss_first_epoch"] = result.history[0]["train_loss"]
            run.numbers["valid_elbo_best"] = result.best_valid_elbo
            _finite(run.numbers, "training")
            _check(result.decoder_updates > 0, "training: the decoder was never updated")
            lap("train")

            stage = "evaluate"
            seed_everything(seed + 1, True, device)
            metrics, _ = evaluate(method, data, EVAL, device)
            run.numbers.update(test_elbo=metrics["test_elbo"], test_nll=metrics["test_nll"])
            _finite(run.numbers, "evaluation")
            _check(-metrics["test_nll"] >= metrics["test_elbo"] - 1e-6,
                   f"evaluation: IWAE bound {-metrics['test_nll']:.4f} below the ELBO {metrics['test_elbo']:.4f}")
            lap("evaluate")

            stage = "gaps"
            points = next(data.batches("test", GAP_POINTS, device=device))
            summary = inference_gaps(method, points, REFERENCE_GAPS if reference else GAPS).summary()
            _finite({k: v["mean"] for k, v in summary.items()}, "gaps")
            run.numbers.update(gaps_elbo_q=summary["elbo_q"]["mean"],
                               gaps_elbo_qstar_ffg=summary["elbo_qstar_ffg"]["mean"],
                               gaps_log_px_ais=summary["log_px_ais"]["mean"])
            lap("gaps")

        if not reference:  # the device's own generator here: its kernels are exercised too
            stage = "timing"
            batches = sorted({1, min(TIMING.batch_size, data.split("test").shape[0])})
            inputs = {b: next(data.batches("test", b, device=device)) for b in batches}
            rounds = time_interleaved({method_name: method}, inputs, TIMING)[method_name]
            run.timing_ms = {str(b): 1000.0 * min(seconds) / b for b, seconds in rounds.items()}
            _check(all(math.isfinite(v) and v > 0 for v in run.timing_ms.values()), f"timing: {run.timing_ms}")
            lap("timing")
    except Exception as exc:  # noqa: BLE001 - a failing cell is a row of the table, not the end of the run
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        run.failed_stage, run.error = stage, f"{type(exc).__name__}: {first_line}"
        run.traceback = traceback.format_exc()
    run.seconds = time.perf_counter() - started
    return run


# --------------------------------------------------------------------------------------------------
# comparison and the table


def loose_reason(name: str, family: str, device: torch.device) -> Optional[str]:
    """Why a quantity is compared at LOOSE_RTOL, or None for the default tolerance."""
    if COMPARED[name]:
        return "local optimization / AIS: discontinuous steps"
    if family == "conv_image" and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "TF32 convolutions on CUDA"
    return None


def compare(run: Run, reference: Run, family: str, device: torch.device) -> tuple[bool, float, list[str], dict]:
    """(all within tolerance, the largest relative difference, notes, per-quantity differences). The notes
    name the cell's own reasons for a looser tolerance (those of the gaps quantities hold for every cell)."""
    ok, worst, notes, diffs = True, 0.0, set(), {}
    for name in COMPARED:
        a, b = run.numbers[name], reference.numbers[name]
        reason = loose_reason(name, family, device)
        rtol = LOOSE_RTOL if reason else TOLERANCE["rtol"]
        within = abs(a - b) <= rtol * abs(b) + TOLERANCE["atol"]
        relative = abs(a - b) / max(abs(b), 1e-12)
        diffs[name] = {"device": a, "cpu": b, "relative": relative, "rtol": rtol, "within": within}
        worst = max(worst, relative)
        ok = ok and within
        if reason and not COMPARED[name]:
            notes.add(f"rtol {rtol:g}: {reason}")
    return ok, worst, sorted(notes), diffs


def row_for(label: str, method_name: str, options: dict, family: str, data: DataSplits, device: torch.device,
            reference_device: Optional[torch.device], seed: int) -> dict:
    """One row of the table: the cell on `device`, then (if it passed) on the reference device, compared;
    the warnings of both runs are collected in the row."""
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        run = run_cell(method_name, options, family, data, device, seed)
        reference = None
        if run.failed_stage is None and reference_device is not None:
            reference = run_cell(method_name, options, family, data, reference_device, seed, reference=True)
    caught = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:200]}" for w in recorded})
    row = {"method": label, "family": family, "result": "pass", "seconds": round(run.seconds, 3),
           "stage_seconds": run.stage_seconds, "numbers": run.numbers, "timing_ms": run.timing_ms,
           "warnings": caught, "note": ""}
    if run.failed_stage is not None:
        row.update(result="fail", note=f"{run.failed_stage}: {run.error}", traceback=run.traceback)
        return row
    if reference is None:
        row["note"] = "no CPU comparison"
        return row
    row["reference_seconds"] = round(reference.seconds, 3)
    if reference.failed_stage is not None:
        row.update(result="fail", note=f"CPU reference run, {reference.failed_stage}: {reference.error}",
                   traceback=reference.traceback)
        return row
    ok, worst, notes, diffs = compare(run, reference, family, device)
    row.update(max_relative_difference=worst, comparison=diffs, note="; ".join(notes))
    if not ok:
        off = [k for k, d in diffs.items() if not d["within"]]
        note = f"differs from the CPU run in {', '.join(off)}"
        row.update(result="fail", note=f"{note}; {row['note']}" if notes else note)
    return row


def format_table(rows: list[dict]) -> str:
    """The rows as a plain-text table: method, family, result, seconds, max rel diff, note."""
    header = ("method", "family", "result", "seconds", "max rel diff", "note")
    lines = [[r["method"], r["family"], r["result"], f"{r['seconds']:.1f}",
              f"{r['max_relative_difference']:.1e}" if "max_relative_difference" in r else "-", r["note"]]
             for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *lines]]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# the command


Variant = tuple[str, str, dict]  # (row label, registered method, its options)


def selection(methods: Optional[str], families: Optional[str], quick: bool) -> tuple[list[Variant], list[str]]:
    """The (row label, method, options) variants and the families asked for; ConfigError on unknown names."""
    wanted_methods = methods.split(",") if methods else (QUICK["methods"] if quick else available_methods())
    wanted_families = families.split(",") if families else (QUICK["families"] if quick else list(FAMILY_DATA))
    variants = []
    for name in wanted_methods:
        base = name.split(":")[0]
        if base not in available_methods():
            raise ConfigError(f"unknown method {name!r} (registered: {', '.join(available_methods())})")
        for label, options in VARIANTS.get(base, {base: {}}).items():
            if name in (base, label):
                variants.append((label, base, options))
    unknown = [f for f in wanted_families if f not in FAMILY_DATA]
    if unknown:
        raise ConfigError(f"no smoke data for families {unknown} (have: {', '.join(FAMILY_DATA)})")
    return variants, wanted_families


def fits(method_name: str, options: dict, family: str, data: DataSplits) -> Optional[str]:
    """None when the method builds on this family, else why not (the row is then skipped)."""
    try:
        model = models.build(data, {"family": family, **FAMILY_DATA[family][1]})
        build_method(method_name, model, {**method_class(method_name).test_config, **options})
    except ConfigError as exc:
        return str(exc)
    return None


def smoke(device: torch.device, variants: list[Variant], families: list[str], compare_cpu: bool = True,
          seed: int = SEED, echo: Callable[[str], None] = lambda line: None) -> dict:
    """Run the selected cells; return the JSON payload (rows, tolerance, device, determinism, passed)."""
    reference = torch.device("cpu") if compare_cpu else None
    started, rows = time.perf_counter(), []
    for family in families:
        data = FAMILY_DATA[family][0]()
        for label, method_name, options in variants:
            reason = fits(method_name, options, family, data)
            if reason is not None:
                rows.append({"method": label, "family": family, "result": "skip", "seconds": 0.0, "note": reason})
                continue
            rows.append(row_for(label, method_name, options, family, data, device, reference, seed))
            r = rows[-1]
            echo(f"{label:10s} {family:17s} {r['result']:4s} {r['seconds']:6.1f} s  {r['note']}")
    return {
        "device": str(device),
        "device_name": provenance.device_name(device),
        "torch": torch.__version__,
        "reference": "cpu (a second run)" if device.type == "cpu" else "cpu",
        "compared": list(COMPARED) if compare_cpu else [],
        "tolerance": {**TOLERANCE, "loose_rtol": LOOSE_RTOL},
        "determinism": determinism_record(True, device),
        "rows": rows,
        "passed": all(r["result"] != "fail" for r in rows),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--methods", help="comma-separated (default: every registered method; savae:fd "
                                          "selects SA-VAE's finite-difference mode alone)")
    parser.add_argument("--families", help=f"comma-separated (default: {','.join(FAMILY_DATA)})")
    parser.add_argument("--quick", action="store_true",
                        help=f"methods {','.join(QUICK['methods'])} on families {','.join(QUICK['families'])}")
    parser.add_argument("--no-compare", action="store_true", help="skip the CPU reference runs")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, help="write the table and details as JSON")
    args = parser.parse_args(argv)
    prepare_determinism(True)  # before anything touches CUDA
    try:
        device = resolve_device(args.device)
        variants, families = selection(args.methods, args.families, args.quick)
    except ConfigError as exc:
        parser.error(str(exc))
    print(f"amortbench smoke on {device} ({provenance.device_name(device)}), torch {torch.__version__}", flush=True)
    payload = smoke(device, variants, families, not args.no_compare, args.seed,
                    echo=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_table(payload["rows"]))
    loose = [name for name, is_loose in COMPARED.items() if is_loose]
    print(f"{'PASSED' if payload['passed'] else 'FAILED'} in {payload['seconds']:.0f} s. Compared with "
          f"{payload['reference']}: {', '.join(payload['compared']) or 'nothing'}; |a - b| <= rtol |b| + "
          f"{TOLERANCE['atol']:g} with rtol {TOLERANCE['rtol']:g} ({', '.join(loose)}: {LOOSE_RTOL:g})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0 if payload["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
