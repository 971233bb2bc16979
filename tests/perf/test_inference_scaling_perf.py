"""Inference-time scaling: posterior(x).sample(1) at batch 100 on the Cremer / IWAE MNIST model
(784-200-200-50) as each method's test-time parameter grows, all 15 settings interleaved round-robin in one
process:

* svi and savae at K = 5, 10, 20 test-time SVI steps (``test_steps``; lr 0.02 as in config/default.yaml),
* iterative amortized inference at T = 1, 5, 20 test-time updates (``test_iterations``),
* RecMix at M = 1, 3, 5 components (batched, in its trained state: all components and weights set),
* IAF at 2, 4, 8 steps (``steps``).

Per family: the share of rounds in which the time rises strictly with the parameter, and the ratio between
consecutive settings (per round, median and IQR). Across families: savae / svi at equal K (savae runs svi's
K steps plus one encoder pass, so it should be >= 1 within the spread). No timed assertions; the lines
print at the end (`make bench`). About 15 s on one thread."""
from __future__ import annotations

import statistics

import torch

from methods import build_method

from .conftest import BATCH, LATENT, refining_recmix
from .interleave import interleave, monotonic_share, ratio_summary

SVI_LR = 0.02
FAMILIES = {  # family: (parameter, settings, options of a setting)
    "svi": ("K", [5, 10, 20], lambda k: {"steps": k, "test_steps": k, "lr": SVI_LR}),
    "savae": ("K", [5, 10, 20], lambda k: {"steps": k, "test_steps": k, "lr": SVI_LR}),
    "iterative": ("T", [1, 5, 20], lambda t: {"test_iterations": t}),
    "recmix": ("M", [1, 3, 5], lambda m: {"components": m}),
    "iaf": ("steps", [2, 4, 8], lambda s: {"steps": s}),
}


def build(model, family: str, setting: int):
    torch.manual_seed(0)
    if family == "recmix":
        return refining_recmix(model, setting)
    return build_method(family, model, FAMILIES[family][2](setting)).eval()


def test_inference_time_scaling(measured, cremer_model_and_batch, report_ratio):
    model, x = cremer_model_and_batch
    variants = {}
    for family, (param, settings, _) in FAMILIES.items():
        for setting in settings:
            method = build(model, family, setting)
            with torch.no_grad():  # untimed check that every setting produces a finite posterior sample
                z, log_q = method.posterior(x).sample(1)
            assert z.shape == (1, BATCH, LATENT) and torch.isfinite(log_q).all(), (family, setting)
            variants[(family, setting)] = lambda method=method: method.posterior(x).sample(1)
    with torch.no_grad():  # samples of >= 20 ms: the ~1 ms settings (recmix, iaf) repeat within a sample
        timed = interleave({f"{f} {s}": fn for (f, s), fn in variants.items()}, rounds=11, repeats=3,
                           min_sample_s=0.02)
    times = {key: timed[f"{key[0]} {key[1]}"] for key in variants}
    where = f"batch {BATCH}, 784-200-200-{LATENT}, {torch.get_num_threads()} thread(s)"

    for family, (param, settings, _) in FAMILIES.items():
        series = [times[(family, s)] for s in settings]
        share = monotonic_share(series)
        rising = round(share * len(series[0]))
        steps = "; ".join(f"{param}={b}/{param}={a} {ratio_summary(times[(family, b)], times[(family, a)])}"
                          for a, b in zip(settings, settings[1:]))
        medians = ", ".join(f"{1e3 * statistics.median(times[(family, s)]):.2f}" for s in settings)
        report_ratio(f"{family} posterior(x).sample(1) vs {param} in {settings}: time rises in {rising}/"
                     f"{len(series[0])} rounds ({share:.0%}); {steps}; medians {medians} ms; {where}")

    for k in FAMILIES["svi"][1]:
        summary = ratio_summary(times[("savae", k)], times[("svi", k)])
        verdict = ("IQR above 1" if summary.q1 > 1 else "IQR straddles 1" if summary.straddles(1.0)
                   else "IQR below 1")
        report_ratio(f"savae / svi posterior(x).sample(1) at K={k}: {summary}, expected >= 1 (svi's K steps plus "
                     f"an encoder pass): {verdict}; {where}")
