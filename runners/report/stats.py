"""The statistics behind `ablate figures`: seed summaries, intervals, tests and their correction.

Seeds are few (2-6 per variant), so every interval is a Student-t interval, not a normal one,
and every test is one scipy names: the numbers can be checked against scipy on the same data.

* A variant's final error: mean, sample std (ddof=1), the 95% t-interval of the mean, median
  and best (lowest) over its converged seeds, and how many of its runs failed (diverged). The
  papers report a diverged configuration as "fail"; here it is "fail k/N" and stays out of the
  mean, where one exploded run would otherwise set the result.
* With fewer than 3 seeds a t-interval says little (with 2, t_0.975 = 12.7: the 95% interval
  of an error can pass 100%); figures then draw the min..max of the seeds and say so.
* Intervals of an error are clipped to its range, [0, 100]%: the t-interval is symmetric, the
  metric is not.
* Plain vs residual at one depth: the two nets trained with the same `seed` share their data
  order and split, so the difference is taken per seed (paired): `scipy.stats.ttest_rel` and
  its interval; with >= 6 pairs also `scipy.stats.wilcoxon`, which does not assume normal
  differences but cannot reach p < 0.05 with fewer than 6 pairs (2 / 2^5 = 0.0625).
* Different depths or variants share nothing but the seed's number, so their runs are
  independent samples: Welch's t-test (`ttest_ind`, equal_var=False) and its interval.
* The p-values of one table's column are corrected for multiplicity with Holm's step-down
  method (it controls the family-wise error rate without assuming independent tests).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
WILCOXON_MIN_PAIRS = 6
MIN_SEEDS_FOR_CI = 3  # below this, bands are min..max of the seeds


@dataclass(frozen=True)
class Summary:
    """Final errors of one variant's runs; the failed ones (non-finite) are counted, not averaged."""

    n: int  # converged runs (finite values)
    failed: int  # runs with no finite value: diverged
    mean: float
    std: float  # sample std (ddof=1); nan for n < 2
    lo: float  # 95% t-interval of the mean (clipped to `bounds` if given); nan for n < 2
    hi: float
    median: float
    best: float  # the lowest value: the best error

    @property
    def runs(self) -> int:
        return self.n + self.failed

    def fail_text(self) -> str:
        """'' when nothing failed, 'fail' when every run did (as the papers write it), else 'fail k/N'."""
        if not self.failed:
            return ""
        return "fail" if not self.n else f"fail {self.failed}/{self.runs}"


def summarize(values, bounds: tuple[float, float] | None = None) -> Summary:
    """Summary of `values`; non-finite values are failed runs. `bounds` clips the interval."""
    allv = np.asarray(list(values), float)
    x = allv[np.isfinite(allv)]
    n, failed = len(x), len(allv) - len(x)
    if n == 0:
        return Summary(0, failed, *[math.nan] * 6)
    mean, median, best = float(np.mean(x)), float(np.median(x)), float(np.min(x))
    if n < 2:
        return Summary(1, failed, mean, math.nan, math.nan, math.nan, median, best)
    std = float(np.std(x, ddof=1))
    half = t_half_width(std, n)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = clip(lo, hi, bounds)
    return Summary(n, failed, mean, std, lo, hi, median, best)


def t_half_width(std: float, n: int, confidence: float = CONFIDENCE) -> float:
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))


def clip(lo, hi, bounds: tuple[float, float]):
    """The interval [lo, hi] within the metric's range (scalars or arrays; NaN stays NaN)."""
    a, b = bounds
    if np.ndim(lo) == 0:
        lo, hi = float(lo), float(hi)
        return (lo if math.isnan(lo) else min(max(lo, a), b), hi if math.isnan(hi) else min(max(hi, a), b))
    return np.clip(lo, a, b), np.clip(hi, a, b)


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaN (no test) stays NaN and does
    not count towards m. Adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j))."""
    p = [float(v) if v is not None else math.nan for v in pvalues]
    idx = sorted((i for i, v in enumerate(p) if math.isfinite(v)), key=lambda i: p[i])
    m, out, running = len(idx), [math.nan] * len(p), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


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
