"""Interleaved timing and paired ratio statistics for the perf cases.

Timing on a shared machine drifts (here +-25 % between rounds, 2x between sequential runs), so speed is
only ever reported as a ratio measured within one process, with the variants interleaved round-robin over
several rounds (drift then hits every variant alike), and each ratio comes with its spread over the rounds.
Nothing here asserts on a time.

    times = interleave({"method": infer, "avi": infer_avi}, rounds=7, repeats=3)
    summary = ratio_summary(times["method"], times["avi"])  # per-round ratio, then median and IQR
    str(summary)  # 'ratio 1.07 (IQR 1.03–1.12, 7 rounds)'

``interleave`` returns, per variant, one number per round: seconds per call (the min, or the median, of
``repeats`` samples taken back to back in that round). A ratio is formed per round from the two variants'
numbers of the same round, and the summary is the median and the interquartile range of those ratios.
The statistics (``quantile``, ``summarize``, ``ratio_summary``, ``per_round_ratios``, ``monotonic_share``)
are plain arithmetic on lists and are unit-tested in ``test_interleave_stats.py``.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Optional, Sequence

__all__ = ["Summary", "interleave", "monotonic_share", "per_round_ratios", "quantile", "ratio_summary",
           "summarize"]


def interleave(
    variants: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 7,
    repeats: int = 3,
    warmup: int = 1,
    reduce: Literal["min", "median"] = "min",
    min_sample_s: float = 0.0,
    before: Optional[Mapping[str, Callable[[], object]]] = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Time named zero-argument callables round-robin; per variant, one value per round (seconds per call).

    * Warm-up: each variant is called ``warmup`` times (at least once) before the first round.
    * Round r runs every variant once, starting at variant ``r mod n`` of ``variants`` (the start
      rotates, so no variant always runs first or right after the same neighbour). Within its turn a
      variant takes ``repeats`` samples back to back; the round's value is their ``reduce`` (min or median).
    * A sample is ``number`` consecutive calls timed together, divided by ``number``. ``number`` is 1
      unless ``min_sample_s`` > 0: then it is set from the last warm-up call so that a sample lasts at
      least ``min_sample_s`` (for sub-millisecond callables, where timer and call overhead would dominate).
    * ``before[name]``, if given, runs untimed before each sample of that variant (and each warm-up call):
      e.g. reset a model or delete a checkpoint. With ``number`` > 1 it runs once per sample, not per call.
    * ``clock`` is the timer (seconds); the unit tests pass a fake one.

    A ``gc.collect()`` runs (untimed) before each round, so that no variant pays for the garbage of another.
    """
    if not variants:
        raise ValueError("interleave needs at least one variant")
    if rounds < 1 or repeats < 1:
        raise ValueError(f"rounds and repeats must be >= 1 (got rounds={rounds}, repeats={repeats})")
    if reduce not in ("min", "median"):
        raise ValueError(f"reduce must be 'min' or 'median', not {reduce!r}")
    before = dict(before or {})
    unknown = set(before) - set(variants)
    if unknown:
        raise ValueError(f"`before` names variants that do not exist: {sorted(unknown)}")
    names = list(variants)
    number: dict[str, int] = {}
    for name in names:
        elapsed = 0.0
        for _ in range(max(1, warmup)):
            if name in before:
                before[name]()
            t0 = clock()
            variants[name]()
            elapsed = clock() - t0
        number[name] = max(1, math.ceil(min_sample_s / elapsed)) if min_sample_s > 0 and elapsed > 0 else 1

    pick = min if reduce == "min" else statistics.median
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        gc.collect()
        start = r % len(names)
        for name in names[start:] + names[:start]:
            fn, n, samples = variants[name], number[name], []
            for _ in range(repeats):
                if name in before:
                    before[name]()
                t0 = clock()
                for _ in range(n):
                    fn()
                samples.append((clock() - t0) / n)
            times[name].append(pick(samples))
    return times


# --------------------------------------------------------------------------------------------------
# statistics over rounds (pure arithmetic, unit-tested)


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation between order statistics (numpy's default, Hyndman-Fan
    type 7): position q * (n - 1) in the sorted values."""
    if not values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


@dataclass(frozen=True)
class Summary:
    """Median and interquartile range of one quantity over rounds (a ratio, a share of an epoch, ...)."""

    median: float
    q1: float
    q3: float
    rounds: int

    def format(self, label: str = "ratio", digits: int = 2) -> str:
        unit = "round" if self.rounds == 1 else "rounds"
        return (f"{label} {self.median:.{digits}f} (IQR {self.q1:.{digits}f}\u2013{self.q3:.{digits}f}, "
                f"{self.rounds} {unit})")

    def __str__(self) -> str:
        return self.format()

    def straddles(self, value: float = 1.0) -> bool:
        """Whether `value` lies inside the interquartile range (the rounds do not settle which side wins)."""
        return self.q1 <= value <= self.q3


def summarize(values: Sequence[float]) -> Summary:
    """Median, first and third quartile (``quantile``) of per-round values."""
    values = list(values)
    if not values:
        raise ValueError("summarize needs at least one round")
    if any(math.isnan(v) for v in values):
        raise ValueError(f"NaN among the per-round values {values}")
    return Summary(quantile(values, 0.5), quantile(values, 0.25), quantile(values, 0.75), len(values))


def per_round_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """numerator[i] / denominator[i] for every round i (both measured in the same round)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"paired ratios need the same rounds: {len(numerator)} vs {len(denominator)} values")
    if not numerator:
        raise ValueError("paired ratios need at least one round")
    if any(d == 0 for d in denominator):
        raise ValueError("a denominator is zero")
    return [n / d for n, d in zip(numerator, denominator)]


def ratio_summary(numerator: Sequence[float], denominator: Sequence[float]) -> Summary:
    """The paired ratio over rounds: a ratio per round, then its median and IQR (not a ratio of medians)."""
    return summarize(per_round_ratios(numerator, denominator))


def monotonic_share(series: Sequence[Sequence[float]], strict: bool = True) -> float:
    """Share of rounds in which the values rise along ``series`` (settings in increasing order; each a
    per-round list): 1.0 when every round has t(setting 1) < t(setting 2) < ... (<= unless ``strict``)."""
    if len(series) < 2:
        raise ValueError("monotonicity needs at least two settings")
    rounds = {len(s) for s in series}
    if len(rounds) != 1 or 0 in rounds:
        raise ValueError(f"every setting needs the same, non-zero number of rounds (got {sorted(rounds)})")
    n = rounds.pop()
    rising = 0
    for i in range(n):
        column = [s[i] for s in series]
        pairs = zip(column, column[1:])
        if all(a < b if strict else a <= b for a, b in pairs):
            rising += 1
    return rising / n
