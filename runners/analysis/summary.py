"""Statistics over seeds and the drawing conventions the analyses share, as elsewhere in the lab.

A variant's scalar: mean, 95% t-interval over seeds (`runners.report.stats.summarize`); plain vs
residual: the paired difference residual - plain over the seeds both have
(`runners.report.stats.paired`: twins share the seed, hence the data order and split). Curves
over seeds: the mean with a 95% t-band from 3 seeds on, min..max below (`figures.band_of`).
Figures use the print-ready style of `runners.report.figures` (its rc, its PDF/PNG writer).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections import defaultdict

import numpy as np
import seaborn as sns
from matplotlib import rc_context

from ..report import figures as report_figures
from ..report import stats

BAND_NOTE = "bands: 95% t-interval over seeds (min..max below 3 seeds)"


def variants(runs) -> dict:
    """variant -> its runs, in the study's order (runs arrive sorted by variant, then seed)."""
    out: dict = defaultdict(list)
    for r in runs:
        out[r.variant].append(r)
    return dict(out)


def label(v) -> str:
    """A `VariantAxes`' figure label, or an `ArchSpec`'s (signal propagation of a spec)."""
    if hasattr(v, "label"):
        return v.label()
    return arch_label(v)


def arch_label(a) -> str:
    name = ("ResNet" if a.shortcut != "none" else "plain") + f"-{a.total_depth}"
    bits = [a.shortcut] if a.shortcut != "none" else []
    if a.order != "post":
        bits.append(a.order)
    if a.block != "basic":
        bits.append(a.block)
    return name + (f" ({', '.join(bits)})" if bits else "")


def n_text(items) -> str:
    return f"n={len(items)}"


def by_variant(values: dict[str, float], runs) -> list[dict]:
    """[{variant, n, mean, std, lo, hi}] of `values` (run id -> scalar) over each variant's seeds."""
    out = []
    for v, rs in variants(runs).items():
        xs = [values[r.run_id] for r in rs if r.run_id in values]
        if not xs:
            continue
        s = stats.summarize(xs)
        out.append({"variant": label(v), "n": s.n, "mean": s.mean, "std": s.std, "lo": s.lo, "hi": s.hi,
                    "seeds": {str(r.seed): values[r.run_id] for r in rs if r.run_id in values}})
    return out


def twins(runs) -> list[tuple]:
    """[(plain variant, residual variant, [(plain run, residual run) by seed])]: same line
    (family, block, width), same depth, same seed."""
    groups = variants(runs)
    out = []
    for p in groups:
        if getattr(p, "residual", True):
            continue
        for v in groups:
            if v.residual and v.line == p.line and v.depth == p.depth:
                by_seed = {r.seed: r for r in groups[p]}
                pairs = [(by_seed[r.seed], r) for r in groups[v] if r.seed in by_seed]
                if pairs:
                    out.append((p, v, pairs))
    return out


def paired_twins(values: dict[str, float], runs) -> list[dict]:
    """Residual - plain of `values`, paired by seed, per twin pair: the paired t-interval."""
    out = []
    for p, v, pairs in twins(runs):
        pairs = [(a, b) for a, b in pairs if a.run_id in values and b.run_id in values]
        if not pairs:
            continue
        with warnings.catch_warnings():  # scipy's precision warning on near-identical differences
            warnings.simplefilter("ignore", RuntimeWarning)
            c = stats.paired([values[b.run_id] for _, b in pairs], [values[a.run_id] for a, _ in pairs])
        out.append({"plain": label(p), "residual": label(v), "depth": v.depth,
                    **{k: _num(x) for k, x in dataclasses.asdict(c).items()}})
    return out


def _num(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


# -- drawing ---------------------------------------------------------------------------------------
def style():
    return rc_context({**report_figures.paper_style(), "savefig.dpi": 130})


def save(fig, out, stem: str) -> list:
    return report_figures.save_figure(fig, out, stem)


def colors(keys) -> dict:
    keys = list(keys)
    return dict(zip(keys, sns.color_palette("colorblind", max(len(keys), 1))))


def integer_ticks(axis) -> None:
    report_figures.integer_ticks(axis)


def band(ax, xs, rows, color, label, marker=None, scale=1.0, ls="-", lw=1.2):
    """The mean of `rows` (one row per seed) over `xs`, with the lab's band over seeds."""
    m = scale * np.asarray(rows, float)
    n = int(np.sum(np.isfinite(m).all(axis=1)))
    kind = report_figures.band_of(n, "ci")
    with np.errstate(all="ignore"):
        mean = np.nanmean(m, axis=0)
        if kind == "minmax":
            lo, hi = np.nanmin(m, axis=0), np.nanmax(m, axis=0)
        else:
            half = np.array([stats.t_half_width(s, n) for s in np.nanstd(m, axis=0, ddof=1)])
            lo, hi = mean - half, mean + half
    ax.plot(xs, mean, ls=ls, color=color, lw=lw, marker=marker, ms=2.5, label=label)
    if len(m) > 1:
        ax.fill_between(xs, lo, hi, **report_figures.band_style(kind, color))
