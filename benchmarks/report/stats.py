"""The statistics of a leaderboard: paired intervals, convergence, quartiles.

* Paired difference of two methods scored on the same test points i (same seed s):
  d_i = NLL_m(x_i) - NLL_ref(x_i). With one seed the interval is over test points,
  mean(d) ± t_{1-α/2, n-1} sd(d) / sqrt(n); with k >= 2 seeds it is over seeds, the per-seed means
  d_s = mean_i(d_i) giving mean(d_s) ± t_{1-α/2, k-1} sd(d_s) / sqrt(k) (the seed-to-seed spread of
  training then counts, not only the test-point noise). An interval that covers zero is no ranking.
* Convergence of a run: with E epochs run and w = max(1, ceil(window E)), the gain is
  max(valid ELBO over the last w epochs) - max(valid ELBO before them); converged iff gain <= tolerance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats as scipy_stats


@dataclass
class Interval:
    mean: float
    lo: float
    hi: float
    n: int  # test points (one seed) or seeds
    over: str  # "points" | "seeds"

    @property
    def covers_zero(self) -> bool:
        return self.lo <= 0.0 <= self.hi


def mean_interval(values: Sequence[float], confidence: float, over: str) -> Interval:
    """Student-t interval of the mean of `values` (a single value: a zero-width interval, n = 1)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, mean, mean, int(x.size), over)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, int(x.size), over)


def paired_difference(per_seed: dict[int, tuple[np.ndarray, np.ndarray]], confidence: float) -> Optional[Interval]:
    """Interval of NLL_m - NLL_ref; `per_seed` maps a seed to (log p(x) of m, log p(x) of ref) per test
    point, the same points in the same order. Over points for one seed, over seeds for several."""
    if not per_seed:
        return None
    diffs = {s: (-np.asarray(m, np.float64)) - (-np.asarray(r, np.float64)) for s, (m, r) in per_seed.items()}
    if len(diffs) == 1:
        return mean_interval(next(iter(diffs.values())), confidence, "points")
    return mean_interval([float(d.mean()) for d in diffs.values()], confidence, "seeds")


def convergence_gain(valid_elbo: Sequence[float], window: float) -> Optional[float]:
    """Gain of the best validation ELBO in the final window over the best before it (None: too short)."""
    values = [v for v in valid_elbo if v is not None and math.isfinite(v)]
    w = max(1, math.ceil(window * len(values)))
    if len(values) <= w:
        return None
    return max(values[-w:]) - max(values[:-w])
