"""The statistics of the interleaved perf measurements (tests/perf/interleave.py), on made-up numbers.

Runs in `make test`: nothing here times anything (the scheduling tests drive ``interleave`` with a fake
clock and record the call order)."""
from __future__ import annotations

import itertools

import pytest

from .interleave import (Summary, interleave, monotonic_share, per_round_ratios, quantile, ratio_summary,
                         summarize)


def test_quantile_interpolates_linearly_between_order_statistics():
    values = [7.0, 1.0, 3.0, 5.0, 9.0]  # sorted: 1 3 5 7 9, positions 0..4
    assert quantile(values, 0.0) == 1.0 and quantile(values, 1.0) == 9.0
    assert quantile(values, 0.5) == 5.0
    assert quantile(values, 0.25) == 3.0 and quantile(values, 0.75) == 7.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.25) == pytest.approx(1.75)  # position 0.75
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)
    assert quantile([4.2], 0.25) == 4.2
    with pytest.raises(ValueError):
        quantile([], 0.5)
    with pytest.raises(ValueError):
        quantile([1.0], 1.5)


def test_paired_ratio_is_per_round_then_median_and_iqr():
    # seven rounds; the denominator drifts 2x, the true ratio is 1.0 .. 1.2 in every round
    den = [1.0, 2.0, 1.5, 1.0, 2.0, 1.2, 1.6]
    factors = [1.10, 1.00, 1.20, 1.05, 1.15, 1.07, 1.03]
    num = [d * f for d, f in zip(den, factors)]
    assert per_round_ratios(num, den) == pytest.approx(factors)
    s = ratio_summary(num, den)
    # sorted factors: 1.00 1.03 1.05 1.07 1.10 1.15 1.20; Q1 at position 1.5, Q3 at position 4.5
    assert s.rounds == 7
    assert s.median == pytest.approx(1.07)
    assert s.q1 == pytest.approx(1.04)
    assert s.q3 == pytest.approx(1.125)
    # a ratio of medians would mix rounds: median(num) / median(den) differs here
    assert sorted(num)[3] / sorted(den)[3] != pytest.approx(s.median)
    assert str(s) == "ratio 1.07 (IQR 1.04\u20131.12, 7 rounds)"  # 1.125 rounds half-to-even


def test_summary_format_and_straddles():
    s = Summary(median=1.0712, q1=1.0251, q3=1.1249, rounds=7)
    assert str(s) == "ratio 1.07 (IQR 1.03\u20131.12, 7 rounds)"
    assert s.format("share", digits=3) == "share 1.071 (IQR 1.025\u20131.125, 7 rounds)"
    assert Summary(2.0, 2.0, 2.0, 1).format() == "ratio 2.00 (IQR 2.00\u20132.00, 1 round)"
    assert not s.straddles(1.0) and s.straddles(1.1)
    assert summarize([0.9, 1.0, 1.1, 1.2]).straddles(1.0)


def test_summarize_even_rounds_and_bad_input():
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert (s.median, s.q1, s.q3, s.rounds) == (pytest.approx(2.5), pytest.approx(1.75), pytest.approx(3.25), 4)
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match="same rounds"):
        per_round_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="zero"):
        per_round_ratios([1.0], [0.0])


def test_monotonic_share_counts_rounds_that_rise_along_the_settings():
    k5 = [1.0, 1.0, 1.0, 1.0]
    k10 = [2.0, 0.9, 2.0, 1.0]
    k20 = [4.0, 4.0, 1.5, 4.0]
    # round 0 rises; round 1 falls 5 -> 10; round 2 falls 10 -> 20; round 3 ties 5 -> 10
    assert monotonic_share([k5, k10, k20]) == 0.25
    assert monotonic_share([k5, k10, k20], strict=False) == 0.5
    assert monotonic_share([k5, k20]) == 1.0
    with pytest.raises(ValueError):
        monotonic_share([k5])
    with pytest.raises(ValueError):
        monotonic_share([k5, [1.0]])


class FakeClock:
    """A clock that stands still unless a fake variant advances it by its made-up cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_interleave_rotates_the_start_warms_up_and_reduces_repeats():
    clock, calls = FakeClock(), []
    costs = {"a": iter(itertools.cycle([3.0, 1.0, 2.0])), "b": iter(itertools.cycle([5.0])),
             "c": iter(itertools.cycle([1.0, 4.0]))}

    def variant(name):
        def run():
            calls.append(name)
            clock.now += next(costs[name])
        return run

    times = interleave({n: variant(n) for n in "abc"}, rounds=3, repeats=3, warmup=2, clock=clock)
    # warm-up: two calls each in order, then rounds starting at a, b, c in turn, three repeats per turn
    assert calls[:6] == list("aabbcc")
    rounds = ["".join(calls[6 + 9 * r: 6 + 9 * (r + 1)]) for r in range(3)]
    assert rounds == ["aaabbbccc", "bbbcccaaa", "cccaaabbb"]
    assert list(times) == ["a", "b", "c"]
    assert times["a"] == [1.0, 1.0, 1.0]  # min of a permutation of (3, 1, 2) in every round
    assert times["b"] == [5.0, 5.0, 5.0]
    assert times["c"] == [1.0, 1.0, 1.0]

    costs["a"] = iter(itertools.cycle([3.0, 1.0, 2.0]))
    median_times = interleave({"a": variant("a")}, rounds=2, repeats=3, warmup=0, reduce="median", clock=clock)
    assert median_times["a"] == [2.0, 2.0]  # warm-up took the 3.0; then (1, 2, 3) and (1, 2, 3) again


def test_interleave_calibrates_calls_per_sample_and_runs_before_hooks():
    clock, log = FakeClock(), []

    def fast():
        log.append("fast")
        clock.now += 0.001

    def slow():
        log.append("slow")
        clock.now += 0.5

    times = interleave({"fast": fast, "slow": slow}, rounds=2, repeats=2, warmup=1, min_sample_s=0.01,
                       before={"slow": lambda: log.append("reset")}, clock=clock)
    assert log.count("fast") == 1 + 2 * 2 * 10  # 10 calls per sample reach 10 ms
    assert log.count("slow") == 1 + 2 * 2 and log.count("reset") == log.count("slow")
    assert all(log[i - 1] == "reset" for i, entry in enumerate(log) if entry == "slow")
    assert times["fast"] == pytest.approx([0.001, 0.001]) and times["slow"] == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError):
        interleave({"fast": fast}, before={"missing": fast}, clock=clock)
    with pytest.raises(ValueError):
        interleave({}, clock=clock)
