"""The statistics behind `ablate figures`: seed summaries, intervals, tests and their correction.

Seeds are few (2-6 per variant), so every interval is a Student-t interval, not a normal one,
and every test is one scipy names: the numbers can be checked against scipy on the same data.

* A run fails, as He 2016b defines it (Table 1's note), when its test error is above 20%; a
  run that diverged fails too (FAIL_TEST_ERROR). A variant's final error: the median and best
  (lowest) over ALL its N runs, a fail counting as the worst (+inf), as the paper's "median of
  5" is taken (a median that lands on a fail is "fail"); the fail count ("fail k/N"); and the
  mean, sample std (ddof=1) and 95% t-interval of the mean over its converged (not diverged)
  runs, where one exploded run would otherwise set the result.
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
# He 2016b, Table 1's note: '"fail" means the test error is higher than 20%' (CIFAR-10 at the
# papers' 64k-iteration recipe); a diverged run (no finite error) fails too. A fraction.
FAIL_TEST_ERROR = 0.20
FAIL_RULE = "He 2016b Table 1's note: test error above 20% (CIFAR-10), or diverged"


def is_fail(test_error: float, diverged: bool = False) -> bool:
    """He 2016b's fail (FAIL_TEST_ERROR): `test_error` a fraction, NaN/inf when it diverged."""
    return diverged or not math.isfinite(test_error) or test_error > FAIL_TEST_ERROR


@dataclass(frozen=True)
class Summary:
    """Final errors of one variant's runs: the diverged ones (non-finite) are counted, not averaged;
    the fails (diverged, or above `fail_above`) count as the worst in the median and the best."""

    n: int  # converged runs (finite values)
    failed: int  # runs with no finite value: diverged
    mean: float  # over the converged runs
    std: float  # sample std (ddof=1); nan for n < 2
    lo: float  # 95% t-interval of the mean (clipped to `bounds` if given); nan for n < 2
    hi: float
    median: float  # over all runs, a fail as +inf: inf when the median lands on a fail
    best: float  # the lowest value over all runs: inf when every run failed
    fails: int = 0  # diverged + above fail_above

    @property
    def runs(self) -> int:
        return self.n + self.failed

    def fail_text(self) -> str:
        """'' when nothing failed, 'fail' when every run did (as the papers write it), else 'fail k/N'."""
        if not self.fails:
            return ""
        return "fail" if self.fails == self.runs else f"fail {self.fails}/{self.runs}"


def summarize(values, bounds: tuple[float, float] | None = None, fail_above: float | None = None) -> Summary:
    """Summary of `values`; non-finite values are diverged runs, and with those above `fail_above`
    (in the values' unit) fails. `bounds` clips the interval."""
    allv = np.asarray(list(values), float)
    finite = np.isfinite(allv)
    x = allv[finite]
    n, failed = len(x), len(allv) - len(x)
    fail = ~finite | (allv > fail_above) if fail_above is not None else ~finite
    ranked = np.where(fail, math.inf, allv)  # a fail is the worst
    median = float(np.sort(ranked)[(len(ranked) - 1) // 2:len(ranked) // 2 + 1].mean()) if len(ranked) else math.nan
    best = float(np.min(ranked)) if len(ranked) else math.nan
    fails = int(fail.sum())
    if n == 0:
        return Summary(0, failed, *[math.nan] * 4, median, best, fails)
    mean = float(np.mean(x))
    if n < 2:
        return Summary(1, failed, mean, math.nan, math.nan, math.nan, median, best, fails)
    std = float(np.std(x, ddof=1))
    half = t_half_width(std, n)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = clip(lo, hi, bounds)
    return Summary(n, failed, mean, std, lo, hi, median, best, fails)


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
