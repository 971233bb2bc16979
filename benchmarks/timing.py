"""Inference timing of every trained cell of a dataset, in one process, interleaved.

Inference time is the wall time of ``posterior(x).sample(1)``: all test-time work of the method
(encoder pass, SVI steps, flow steps, every mixture component, iterative updates) and one draw. It is
measured per example at batch 1 and at ``timing.batch_size``, on the first test points.

Protocol (COMPARISON.md, rule 3): the pipeline runs this stage as one job per dataset, after training,
holding every core, so no other job shares the machine. All cells are loaded first and warmed up
(``warmup`` calls each at every batch size: lazy CUDA module loading, cuDNN autotuning, allocator
growth). Then ``rounds`` rounds: in each round every cell is timed ``repeats`` times at each batch size,
the cells in a rotated order, so that a drift of the machine's speed hits every method alike. A cell's
time in a round is the median of its repeats; the reported time is the median over rounds with the
interquartile range over rounds. On CUDA each call is timed with CUDA events after a synchronize.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from pydantic import Field

from . import provenance
from .datasets import DataSplits
from .options import Options
from .runtime import build_trained, seed_everything

TIMING_VERSION = 1


class TimingConfig(Options):
    batch_size: int = Field(100, ge=1)  # the configured batch (batch 1 is always timed too)
    rounds: int = Field(7, ge=1)  # interleaved rounds over all cells of the dataset
    repeats: int = Field(5, ge=1)  # calls per cell, batch size and round (their median is the round's time)
    warmup: int = Field(3, ge=0)  # calls per cell and batch size before the first round


def _call_seconds(method, x: torch.Tensor) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        method.posterior(x).sample(1)
        end.record()
        torch.cuda.synchronize(x.device)
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    method.posterior(x).sample(1)
    return time.perf_counter() - t0


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) with linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0], ordered[0], ordered[0]
    q = statistics.quantiles(ordered, n=4, method="inclusive")
    return q[0], q[1], q[2]


def time_interleaved(methods: dict[str, object], inputs: dict[int, torch.Tensor], cfg: TimingConfig) -> dict:
    """Per cell and batch size: the per-round median seconds per call, rounds interleaved (module docstring)."""
    names = list(methods)
    rounds: dict[str, dict[int, list[float]]] = {n: {b: [] for b in inputs} for n in names}
    with torch.no_grad():  # methods that optimize at test time enable gradients inside
        for name in names:
            for x in inputs.values():
                for _ in range(cfg.warmup):
                    _call_seconds(methods[name], x)
        for r in range(cfg.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                for batch, x in inputs.items():
                    calls = [_call_seconds(methods[name], x) for _ in range(cfg.repeats)]
                    rounds[name][batch].append(statistics.median(calls))
    return rounds


def run_timing(cells: list[dict], model_files: list[Path], data: DataSplits, device: torch.device) -> dict:
    """The timing.json payload of one dataset: every cell's inference time per example, in ms."""
    if not cells:
        raise ValueError("no cells to time")
    cfg = TimingConfig.parse(cells[0]["timing"], "timing")
    seed_everything(0, cells[0]["deterministic"], device)
    methods = {}
    for cell, path in zip(cells, model_files):
        methods[_key(cell)], _ = build_trained(cell, data, device, path)
    test = data.split("test")
    batches = sorted({1, min(cfg.batch_size, test.shape[0])})
    inputs = {b: next(data.batches("test", b, device=device)) for b in batches}
    started = time.time()
    rounds = time_interleaved(methods, inputs, cfg)
    finished = time.time()
    results = []
    for cell in cells:
        per_batch = {}
        for batch in batches:
            ms = [1000.0 * s / batch for s in rounds[_key(cell)][batch]]
            q1, median, q3 = quartiles(ms)
            per_batch[str(batch)] = {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "rounds_ms": ms}
        results.append({"dataset": cell["dataset"], "method": cell["method"], "seed": cell["seed"],
                        "hashes": cell["hashes"], "per_example": per_batch})
    return {
        "dataset": cells[0]["dataset"],
        "timing_config": cfg.to_dict(),
        "timing_version": TIMING_VERSION,
        "batch_sizes": batches,
        "cells": results,
        "measured": {"started": started, "finished": finished},
        "hardware": {"device": str(device), "device_name": provenance.device_name(device),
                     "threads": torch.get_num_threads(), "torch": torch.__version__},
    }


def _key(cell: dict) -> str:
    return f"{cell['method']}/seed{cell['seed']}"
