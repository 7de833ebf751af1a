"""The statistics of `ablate figures` and the papers' lookup, in-process: no store needed."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from runners.report import paper, stats


def test_holm_matches_a_hand_computation():
    # sorted: 0.01 (x4) = 0.04, 0.02 (x3) = 0.06, 0.03 (x2) = 0.06, 0.04 (x1) = 0.04 -> max so far 0.06
    assert stats.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # capped at 1; NaN (no test) stays NaN and is not counted in m (m = 2 here)
    out = stats.holm([0.6, math.nan, 0.01])
    assert out[0] == pytest.approx(0.6) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_summary_t_interval_median_best_against_numpy_and_scipy():
    x = [7.1, 6.4, 6.9, 7.6, 6.6]
    s = stats.summarize(x)
    ci = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert (s.n, s.failed, s.runs) == (5, 0, 5)
    assert s.mean == pytest.approx(np.mean(x)) and s.std == pytest.approx(np.std(x, ddof=1))
    assert (s.lo, s.hi) == pytest.approx(ci)
    assert s.median == pytest.approx(6.9) and s.best == pytest.approx(6.4)


def test_failed_runs_are_counted_not_averaged():
    s = stats.summarize([5.0, math.nan, 6.0, math.inf])
    assert (s.n, s.failed, s.runs) == (2, 2, 4) and s.mean == pytest.approx(5.5)
    assert s.fail_text() == "fail 2/4"
    assert stats.summarize([5.0, 6.0]).fail_text() == ""
    every = stats.summarize([math.nan, math.nan])
    assert every.fail_text() == "fail" and math.isnan(every.mean)  # as the papers write it
    assert every.median == math.inf and every.best == math.inf


def test_the_median_and_best_are_over_all_runs_a_fail_the_worst():
    # He 2016b's fail: test error above 20% (or diverged), counted as the worst of the N runs.
    s = stats.summarize([6.0, 25.0, math.nan, 7.0, 6.5], fail_above=100 * stats.FAIL_TEST_ERROR)
    assert (s.n, s.failed, s.fails, s.runs) == (4, 1, 2, 5) and s.fail_text() == "fail 2/5"
    assert s.median == 7.0 and s.best == 6.0  # the median of 5, ranked 6, 6.5, 7, fail, fail
    assert s.mean == pytest.approx(np.mean([6.0, 25.0, 7.0, 6.5]))  # over the converged runs
    lands = stats.summarize([6.0, 25.0, math.nan], fail_above=20.0)
    assert lands.median == math.inf and lands.best == 6.0  # the median lands on a fail
    assert stats.summarize([6.0, 25.0, 7.0, 30.0], fail_above=20.0).median == math.inf  # even N: a fail in the middle
    assert stats.is_fail(0.25) and stats.is_fail(math.nan) and stats.is_fail(0.05, diverged=True)
    assert not stats.is_fail(0.20)


def test_intervals_are_clipped_to_the_metric_range():
    # Two seeds far apart: the 95% t-interval (t = 12.7) passes 100%, as variants.md once showed.
    raw = stats.summarize([80.0, 96.0])
    assert raw.hi > 100
    s = stats.summarize([80.0, 96.0], (0.0, 100.0))
    assert s.hi == 100.0 and s.lo == 0.0 and s.mean == pytest.approx(88.0)
    lo, hi = stats.clip(np.array([-3.0, 10.0, math.nan]), np.array([5.0, 130.0, math.nan]), (0.0, 100.0))
    assert list(lo[:2]) == [0.0, 10.0] and list(hi[:2]) == [5.0, 100.0] and math.isnan(lo[2])


def test_paired_and_welch_match_scipy():
    a, b = [9.1, 8.7, 9.9, 9.4, 8.8, 9.6], [7.9, 8.0, 8.6, 8.1, 7.7, 8.9]
    c = stats.paired(a, b)
    ref = sps.ttest_rel(a, b)
    assert c.test == "paired t + Wilcoxon" and c.diff == pytest.approx(np.mean(np.subtract(a, b)))
    assert c.p_t == pytest.approx(ref.pvalue) and (c.lo, c.hi) == pytest.approx(tuple(ref.confidence_interval()))
    assert c.p_wilcoxon == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert math.isnan(stats.paired(a[:5], b[:5]).p_wilcoxon)  # < 6 pairs: no Wilcoxon
    w = stats.welch(a, b[:4])
    ref = sps.ttest_ind(a, b[:4], equal_var=False)
    assert w.test == "Welch t" and w.p_t == pytest.approx(ref.pvalue)
    assert (w.lo, w.hi) == pytest.approx(tuple(ref.confidence_interval()))


def _params(**kw):
    base = {"family": "cifar", "depth": "110", "block": "basic", "shortcut": "A", "preact": "false",
            "width": "1", "seed": "0", "data.name": "cifar10"}
    return {**base, **{k: str(v) for k, v in kw.items()}}


@pytest.mark.parametrize("params, a, b", [
    (_params(depth=20), "8.75", None),
    (_params(), "6.43", "6.61"),  # 2016a: best of 5; 2016b: the median
    # the papers' ResNet-110s are option A: an option-B 110 gets no number (2016b's 6.61 is 2016a's A)
    (_params(shortcut="B"), None, None),
    (_params(depth=164, block="bottleneck", shortcut="A"), None, None),  # 2016b's bottlenecks are B
    (_params(depth=164, block="bottleneck", shortcut="B"), None, "5.93"),
    (_params(preact="true"), None, "6.37"),
    (_params(depth=164, block="bottleneck", shortcut="B", preact="true"), None, "5.46"),
    (_params(depth=1001, block="bottleneck", shortcut="B", **{"data.name": "cifar100"}), None, "27.82"),
    # Table 4: the paper's batch-128 row, and the authors' code (its recipe) beside its own runs only
    (_params(depth=1001, block="bottleneck", shortcut="B", preact="true"), None, "4.92"),
    (_params(depth=1001, block="bottleneck", shortcut="B", preact="true", **{"train.recipe": "resnet-1k-layers"}),
     None, "4.62"),
    (_params(shortcut="C"), None, "12.22"),
    (_params(shortcut="none"), None, None),  # plain nets: no paper number
    (_params(depth=56, family="imagenet"), None, None),
    # the JPEG copy of CIFAR-10 is CIFAR-10 (its differences go in the recipe notes)
    (_params(depth=20, **{"data.name": "../shared/data/cifar10-jpeg-subset"}), "8.75", None),
    (_params(depth=20, **{"data.name": "synthetic"}), None, None),
    # architecture fields still to come, read from the arch.* params (synthetic tags)
    (_params(**{"arch.order": "b"}), None, "8.17"),
    (_params(depth=164, block="bottleneck", shortcut="B", **{"arch.order": "d"}), None, "5.91"),
    (_params(shortcut="scale", **{"arch.shortcut_scale": 0.5}), None, "12.35"),
    (_params(shortcut="scale", **{"arch.shortcut_scale": 0.5, "arch.branch_scale": 1}), None, "fail"),
    (_params(shortcut="gate", **{"arch.gate_bias": -6}), None, "8.70"),
    (_params(shortcut="gate", **{"arch.gate_bias": -3}), None, "fail"),
    (_params(shortcut="gate", **{"arch.gate_bias": -7}), None, "9.81"),
    (_params(shortcut="gate", **{"arch.gate_bias": -10}), None, None),  # searched, not printed
    (_params(shortcut="scale", **{"arch.shortcut_scale": 0, "arch.branch_scale": 1}), None, "fail"),  # plain
    (_params(shortcut="shortcut_gate", **{"arch.gate_bias": 0}), None, "12.86"),
    (_params(shortcut="dropout", **{"arch.shortcut_dropout": 0.5}), None, "fail"),
    (_params(block="single"), None, "9.90"),
    (_params(block="single", preact="true"), None, "8.91"),
])
def test_paper_numbers_by_params(params, a, b):
    found = paper.lookup(params)
    assert (found[paper.HE2016A].text() if paper.HE2016A in found else None) == a
    assert (found[paper.HE2016B].text() if paper.HE2016B in found else None) == b


def test_recipe_differences_read_from_params():
    p = _params(depth=20, **{"data.name": "../shared/data/cifar10-jpeg-subset", "data.subset": 2000,
                             "data.val_size": 200, "train.epochs": 15, "train.iterations": "none",
                             "train.batch_size": 64, "train.lr": 0.1, "train.precision": "bf16",
                             "train.warmup": "false"})
    diffs = paper.recipe_differences(p, iterations=420, precision="bf16", device="cuda")
    text = " | ".join(diffs)
    for part in ("ImageFolder ../shared/data/cifar10-jpeg-subset", "subset of 2000", "200 training images held out",
                 "15 epochs (420 iterations) vs the papers' 64k iterations", "batch_size 64 (papers: 128)",
                 "bf16 autocast on cuda"):
        assert part in text, part
    # batch 64 on one device: BatchNorm sees 64 images, as on each of the paper's 2 GPUs
    assert not any("BatchNorm" in d for d in diffs)
    differences = paper.recipe_differences(_params(**{"train.batch_size": 128}))
    assert any("BatchNorm statistics over 128" in d for d in differences)
    assert not any("lr 0.1" in d or "warm-up" in d for d in diffs)  # same as the paper: not listed
    paper_like = _params(**{"train.iterations": 64000, "train.batch_size": 128, "train.warmup": "true",
                            "arch.bn_batch": 64, "data.val_size": 0})
    assert paper.recipe_differences(paper_like, precision="fp32") == []
    assert paper.recipe_differences(paper_like, precision="tf32", device="cuda:0") == [
        "TF32 matmuls and convolutions on cuda:0 (papers: fp32)"]


@pytest.mark.parametrize("params,device,expected", [
    ({"train.precision": "fp32", "train.device": "cuda"}, "cuda", "fp32"),
    ({"train.precision": "tf32", "train.device": "cuda"}, "cuda", "tf32"),
    ({"train.precision": "tf32", "train.device": "cpu"}, "cpu", "fp32"),  # TF32 is a GPU format
    ({"train.precision": "bf16", "train.device": "cpu"}, "cpu", "bf16"),
    # runs logged before train.precision: train.amp
    ({"train.amp": "bf16", "train.device": "auto"}, None, "bf16"),
    ({"train.amp": "auto", "train.device": "cuda:1"}, "cuda:1", "bf16"),
    ({"train.amp": "off", "train.device": "cuda"}, "cuda", "tf32"),  # torch's default cuDNN TF32
    ({"train.amp": "auto", "train.device": "cpu"}, "cpu", "fp32"),
    ({}, None, None),
])
def test_a_runs_precision_from_its_params_old_and_new(params, device, expected):
    from runners.tracking.results import _runtime
    assert _runtime(None, "run", params) == (device, expected)


def test_every_activation_order_has_the_papers_name():
    """2016b Table 2's rows are found for every order ArchSpec can build (b and c were once not)."""
    from models.spec import ORDERS
    assert all(o in paper.ORDERS for o in ORDERS)
