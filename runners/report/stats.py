"""The statistics behind `ablate figures`: seed summaries, intervals and tests.

Seeds are few (3-6 per variant), so every interval is a Student-t interval, not a normal one,
and every test is one scipy names: the numbers can be checked against scipy on the same data.

* A variant's final error: mean, sample std (ddof=1) and the 95% t-interval of the mean.
* Plain vs residual at one depth: the two nets trained with the same `seed` share their data
  order and split, so the difference is taken per seed (paired): `scipy.stats.ttest_rel` and
  its interval; with >= 6 pairs also `scipy.stats.wilcoxon`, which does not assume normal
  differences but cannot reach p < 0.05 with fewer than 6 pairs (2 / 2^5 = 0.0625).
* Degradation (shallowest -> deepest net of one kind): different depths share nothing but the
  seed's number, so the runs are independent samples: Welch's t-test (`ttest_ind`,
  equal_var=False) and its interval, which does not assume equal variances across depths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
WILCOXON_MIN_PAIRS = 6


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample std (ddof=1); nan for n < 2
    lo: float  # 95% t-interval of the mean; nan for n < 2
    hi: float


def summarize(values) -> Summary:
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(np.mean(x))
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(np.std(x, ddof=1))
    half = t_half_width(std, n)
    return Summary(n, mean, std, mean - half, mean + half)


def t_half_width(std: float, n: int, confidence: float = CONFIDENCE) -> float:
    from scipy import stats
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))


@dataclass(frozen=True)
class Comparison:
    """The difference a - b (paired or Welch) with its interval and p-values."""

    test: str  # "paired t" | "paired t + Wilcoxon" | "Welch t" | "n/a"
    n: int  # pairs (paired) or the smaller group (Welch)
    diff: float
    lo: float
    hi: float
    p_t: float
    p_wilcoxon: float  # nan unless >= WILCOXON_MIN_PAIRS pairs


NA = Comparison("n/a", 0, math.nan, math.nan, math.nan, math.nan, math.nan)


def paired(a, b) -> Comparison:
    """a - b over pairs (a[i], b[i]); pairs with a non-finite side are dropped."""
    from scipy import stats
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = len(a)
    if n < 2:
        return Comparison("n/a", n, float(np.mean(a - b)) if n else math.nan,
                          math.nan, math.nan, math.nan, math.nan)
    d = a - b
    if np.ptp(d) == 0:  # identical differences: zero variance, t undefined, the interval is a point
        p = 1.0 if d[0] == 0 else 0.0
        return Comparison("paired t", n, float(d[0]), float(d[0]), float(d[0]), p, math.nan)
    res = stats.ttest_rel(a, b)
    ci = res.confidence_interval(CONFIDENCE)
    p_w, test = math.nan, "paired t"
    if n >= WILCOXON_MIN_PAIRS:
        test = "paired t + Wilcoxon"
        p_w = float(stats.wilcoxon(a, b).pvalue) if np.any(d != 0) else 1.0
    return Comparison(test, n, float(np.mean(d)), float(ci.low), float(ci.high), float(res.pvalue), p_w)


def welch(a, b) -> Comparison:
    """mean(a) - mean(b) for independent samples, Welch's t-interval and test."""
    from scipy import stats
    a, b = _finite(a), _finite(b)
    n = min(len(a), len(b))
    if n == 0:
        return NA
    diff = float(np.mean(a) - np.mean(b))
    if n < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return Comparison("n/a", n, diff, math.nan, math.nan, math.nan, math.nan)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(CONFIDENCE)
    return Comparison("Welch t", n, diff, float(ci.low), float(ci.high), float(res.pvalue), math.nan)


def _finite(values) -> np.ndarray:
    x = np.asarray(list(values), float)
    return x[np.isfinite(x)]
