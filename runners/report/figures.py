"""`ablate figures`: He et al. 2016a/b's figures and tables regenerated from the MLflow store alone.

Nothing is retrained and Optuna is not needed: every number comes from the runs' tags, params
and metric histories (the contract in `runners.tracking.naming`), read by
`runners.tracking.results`: FINISHED runs of the `confirm`/`train` stages, never `search`
trials. Fails (He 2016b's rule, `stats.FAIL_TEST_ERROR`: test error above 20%, or diverged) are
counted ("fail k/N") in every legend; diverged runs are drawn as x markers but kept out of means
and tests, where one exploded run would otherwise set the result. Statistics live in
`runners.report.stats`, tables in `runners.report.tables`, the papers' numbers in
`runners.report.paper`.

Figures (PDF with TrueType fonts and no creation date, + PNG; the same store gives the same
bytes): training curves per kind of net (Fig. 6) and per depth (plain and residual overlaid),
final error vs depth, the training loss (2016b Figs. 1, 3, 6), layer responses (Fig. 7), error
by variant at a fixed depth (Table 3 of 2016a, Tables 1-2 of 2016b). Every band or bar is
clipped to [0, 100]% and is a 95% t-interval from 3 seeds on, min..max below; n is in the legend.

For a paper: one column (3.3 in) or two (6.9 in) wide; legends outside the data; y ranges that
hold every point drawn (the first epochs' near-chance errors included); one meaning per line
style in the whole set (dashed = training error, solid = test error; kinds of net differ by
colour or marker, never by dashes); the papers' numbers drawn where they fall inside the range our
data sets, and as an edge mark with its value where they do not (a CPU-scale study's 55% beside
the paper's 8.75% would otherwise flatten the data to a line); an unfinished study's figures say
PARTIAL in their title.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter
from matplotlib.transforms import IdentityTransform, ScaledTranslation, blended_transform_factory

from ..tracking.results import RunRecord, Study, VariantAxes, parse_float
from . import paper, stats, tables


# -- drawing ------------------------------------------------------------------------------------
ONE_COLUMN, TWO_COLUMNS = 3.3, 6.9  # inches: a two-column paper's column and text widths


def figure_width(panels: int) -> float:
    return ONE_COLUMN if panels == 1 else TWO_COLUMNS


def _suptitle(fig, text: str, partial: str | None) -> None:
    fig.suptitle(("PARTIAL (" + partial + "): " if partial else "") + text, fontsize=7.5)


def paper_style() -> dict:
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper")}
    # TrueType (Type 42) fonts: journals reject Type 3, and text stays selectable.
    rc.update({"pdf.fonttype": 42, "ps.fonttype": 42, "savefig.dpi": 200, "legend.frameon": True,
               "axes.titlesize": 8.5, "legend.fontsize": 6.5})
    return rc


def save_figure(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.pdf", out / f"{stem}.png"]
    # No creation date: the same store gives the same bytes.
    fig.savefig(paths[0], metadata={"CreationDate": None, "ModDate": None})
    fig.savefig(paths[1])
    return paths


def _aggregate(series: list[dict[int, float]], band: str, bounds: tuple[float, float] = (0.0, 1.0)):
    """Steps, mean, band low/high (clipped to `bounds`: errors are fractions) and count over runs
    at each step (runs may end early). band: "ci" (95% t-interval) or "minmax"."""
    steps = sorted(set().union(*series))
    m = np.full((len(series), len(steps)), np.nan)
    col = {s: j for j, s in enumerate(steps)}
    for i, s in enumerate(series):
        for step, val in s.items():
            m[i, col[step]] = val
    m[~np.isfinite(m)] = np.nan
    n = np.sum(np.isfinite(m), axis=0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step no run reached: NaN, not a warning
        mean = np.nanmean(m, axis=0)
        if band == "minmax":
            lo, hi = np.nanmin(m, axis=0), np.nanmax(m, axis=0)
        else:
            std = np.nanstd(m, axis=0, ddof=1)
            half = np.array([stats.t_half_width(s_, int(k)) for s_, k in zip(std, n)])
            lo, hi = stats.clip(mean - half, mean + half, bounds)
    return np.array(steps), mean, lo, hi, n


def band_of(n: int, band: str) -> str:
    """The band drawn over n seeds: min..max below MIN_SEEDS_FOR_CI, where a t-interval is too
    wide to say anything (with 2 seeds its 95% half-width is 12.7 standard errors)."""
    return "minmax" if band == "minmax" or n < stats.MIN_SEEDS_FOR_CI else "ci"


BAND_TEXT = {"ci": "band: 95% t-interval of the mean over seeds",
             "minmax": "band: min..max over seeds"}


def _depth_colors(study: Study) -> dict[int, tuple]:
    depths = sorted({v.depth for v in study.by_variant})
    return dict(zip(depths, sns.color_palette("colorblind", max(len(depths), 1))))


def _kind_colors(study: Study) -> dict[tuple, tuple]:
    kinds = sorted({v.kind for v in study.by_variant})
    return dict(zip(kinds, sns.color_palette("colorblind", max(len(kinds), 1))))


def _fails(runs: list[RunRecord]) -> int:
    """He 2016b's fails among `runs`: test error above 20%, or diverged."""
    return sum(stats.is_fail(r.final_test, r.diverged) for r in runs)


def _seeds_text(runs: list[RunRecord]) -> str:
    """'n=<converged runs>' and, if any, 'fail k/N' (the fails among all N)."""
    n, k = sum(r.converged for r in runs), _fails(runs)
    return f"n={n}" + (f", fail {k}/{len(runs)}" if k else "")


def integer_ticks(axis) -> None:
    """Epochs and layer indices are counts: no 2.5 on their axes."""
    axis.set_major_locator(MaxNLocator(integer=True))


def _fit_ylim(ax, lows: list[float], highs: list[float]) -> None:
    """A y range fitted to what is drawn (in %), within [0, 100], so gaps of a few points show."""
    lo = [v for v in lows if np.isfinite(v)]
    hi = [v for v in highs if np.isfinite(v)]
    if not lo or not hi:
        return
    a, b = min(lo), max(hi)
    pad = max(0.06 * (b - a), 0.5)
    ax.set_ylim(max(0.0, a - pad), min(100.0, b + pad))


def band_style(kind: str, color) -> dict:
    """A t-interval is a filled band; min..max (few seeds) is hatched, so the two never look alike."""
    if kind == "minmax":
        return {"facecolor": "none", "edgecolor": color, "hatch": "////", "alpha": 0.45, "lw": 0}
    return {"color": color, "alpha": 0.15, "lw": 0}


def _style_handles(band_kinds: set[str], diverged: bool) -> list:
    """Legend entries for what line styles mean: dashed = train, solid = test; the band; x."""
    out = [Line2D([], [], color="0.3", ls="--", lw=0.8, label="training error"),
           Line2D([], [], color="0.3", ls="-", lw=1.4, label="test error")]
    out += [Patch(**band_style(b, "0.3"), label=BAND_TEXT[b]) for b in sorted(band_kinds)]
    if diverged:
        out.append(Line2D([], [], color="0.3", ls=":", marker="x", label="diverged run (not in mean)"))
    return out


def _draw_variant_curves(ax, study: Study, v: VariantAxes, x: str, band: str, color, label: str,
                         lows: list, highs: list, bands: set) -> None:
    runs = study.by_variant[v]
    ok = [r for r in runs if r.converged]
    for metric, style, width in (("train_error", "--", 0.8), ("test_error", "-", 1.4)):
        curves = [r.curves[metric] for r in ok if metric in r.curves]
        if not curves:
            continue
        kind = band_of(len(curves), band)
        bands.add(kind)
        steps, mean, lo, hi, _ = _aggregate(curves, kind)
        xs = _x_values(ok, steps, x)
        if metric == "test_error" and kind != band:
            label = label[:-1] + ", min..max band)"
        ax.plot(xs, 100 * mean, style, color=color, lw=width, label=label if metric == "test_error" else None)
        ax.fill_between(xs, 100 * lo, 100 * hi, **band_style(kind, color))
        lows.extend(100 * np.fmin(lo, mean))  # every point, the first (near-chance) epochs too
        highs.extend(100 * np.fmax(hi, mean))
    for r in (r for r in runs if r.diverged and r.curves.get("test_error")):
        steps = sorted(r.curves["test_error"])
        xs = _x_values([r], np.array(steps), x) if x == "iteration" and "iteration" in r.curves \
            else np.array(steps, float)
        ys = np.array([r.curves["test_error"][s] for s in steps]) * 100
        good = np.isfinite(ys)
        if good.any():
            ax.plot(xs[good], ys[good], ":", color=color, lw=0.7)
            ax.plot(xs[good][-1:], ys[good][-1:], "x", color=color, ms=6, mew=1.5)
            highs.append(ys[good][-1])


def plot_curves(study: Study, out: Path, x: str, band: str,
                partial: str | None = None) -> tuple[list[Path], list[str]]:
    """He 2016a Fig. 6, twice: one panel per kind of net (plain, each residual kind) with one line
    per depth (curves*), and one panel per depth overlaying the kinds (curves_by_depth*)."""
    depth_colors, kind_colors, paths, notes = _depth_colors(study), _kind_colors(study), [], []
    runs_all = [r for r in study.runs if r.converged]
    if x == "iteration" and any("iteration" not in r.curves for r in runs_all):
        notes.append("curves: some runs lack the `iteration` metric, plotted against epoch instead")
        x = "epoch"
    lines = study.lines()
    for line, variants in lines.items():
        kinds = sorted({v.kind for v in variants})
        depths = sorted({v.depth for v in variants})
        diverged = any(r.diverged for v in variants for r in study.by_variant[v])
        panels = [("curves", kinds, lambda k: [v for v in variants if v.kind == k],
                   lambda v: (depth_colors[v.depth], f"{v.depth} layers"), lambda vs: f"{vs[0].kind_label()} nets")]
        if len(kinds) > 1:
            panels.append(("curves_by_depth", [d for d in depths if sum(v.depth == d for v in variants) > 1],
                           lambda d: sorted((v for v in variants if v.depth == d), key=lambda v: v.kind),
                           lambda v: (kind_colors[v.kind], v.kind_label()), lambda vs: f"{vs[0].depth} layers"))
        for stem, keys, members, style, title in panels:
            if not keys:
                continue
            fig = Figure(figsize=(figure_width(len(keys)), 3.3), layout="constrained")
            axes = fig.subplots(1, len(keys), sharey=True, squeeze=False)[0]
            lows, highs, bands = [], [], set()
            for ax, key in zip(axes, keys):
                vs = members(key)
                for v in vs:
                    color, name = style(v)
                    _draw_variant_curves(ax, study, v, x, band, color, f"{name} ({_seeds_text(study.by_variant[v])})",
                                         lows, highs, bands)
                ax.set_title(title(vs))
                ax.set_xlabel("iteration" if x == "iteration" else "epoch")
                integer_ticks(ax.xaxis)
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=5.5)  # below the data
            axes[0].set_ylabel("error (%)")
            _fit_ylim(axes[0], lows, highs)
            fig.legend(handles=_style_handles(bands, diverged), loc="outside lower center", ncol=2, fontsize=5.5)
            _suptitle(fig, f"{study.name}: mean over converged seeds (n in each legend)", partial)
            paths += save_figure(fig, out, stem + _line_suffix(line, lines))
    return paths, notes


def _shade(color, rank: int, count: int) -> tuple:
    """`color` lighter for a shallower net: the hue says the kind, the shade the depth."""
    t = 1.0 if count < 2 else 0.45 + 0.55 * rank / (count - 1)
    return tuple(t * c + (1 - t) for c in color[:3])


def plot_training_loss(study: Study, out: Path, x: str, band: str, partial: str | None = None) -> list[Path]:
    """He 2016b Figs. 1, 3 and 6: the training loss of the compared nets, one figure per line, on a
    log axis (the loss spans decades; the papers' curves differ most at its low end). Hue: the
    kind of net; shade: its depth (darker is deeper)."""
    colors, paths, lines = _kind_colors(study), [], study.lines()
    for line, variants in lines.items():
        depths = sorted({v.depth for v in variants})
        fig = Figure(figsize=(figure_width(1), 3.1), layout="constrained")
        ax = fig.subplots()
        bands = set()
        for v in sorted(variants, key=lambda v: (v.kind, v.depth)):
            ok = [r for r in study.by_variant[v] if r.converged and r.curves.get("train_loss")]
            if not ok:
                continue
            kind = band_of(len(ok), band)
            bands.add(kind)
            steps, mean, lo, hi, _ = _aggregate([r.curves["train_loss"] for r in ok], kind, (0.0, math.inf))
            xs = _x_values(ok, steps, x)
            color = _shade(colors[v.kind], depths.index(v.depth), len(depths))
            ax.plot(xs, mean, "-", color=color, lw=1.2, label=f"{v.label()} ({_seeds_text(study.by_variant[v])})")
            ax.fill_between(xs, np.maximum(lo, 1e-6), hi, **band_style(kind, color))
        if not ax.lines:
            continue
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 0.2, 0.5, 1, 2: labelled
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("iteration" if x == "iteration" else "epoch")
        ax.set_ylabel("training loss (log scale)")
        integer_ticks(ax.xaxis)
        handles = ax.get_legend_handles_labels()[0] + [Patch(**band_style(b, "0.3"), label=BAND_TEXT[b])
                                                       for b in sorted(bands)]
        fig.legend(handles=handles, loc="outside lower center", ncol=1)
        _suptitle(fig, f"{study.name}: training loss, mean over converged seeds", partial)
        paths += save_figure(fig, out, "training_loss" + _line_suffix(line, lines))
    return paths


def _x_values(runs: list[RunRecord], steps: np.ndarray, x: str) -> np.ndarray:
    if x != "iteration":
        return steps.astype(float)
    its = [[r.curves["iteration"].get(int(s), np.nan) for s in steps] for r in runs]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        xs = np.nanmean(np.array(its, float), axis=0)
    return np.where(np.isfinite(xs), xs, steps)


def _line_suffix(line: tuple, lines: dict) -> str:
    return "" if len(lines) == 1 else "_" + "-".join(str(p) for p in (line[0], line[1], f"w{line[2]}"))


def _interval(s: stats.Summary, values: list[float], band: str) -> tuple[float, float]:
    """The bar of one point (fractions): the clipped t-interval, or min..max below 3 seeds."""
    if s.n < 2:
        return s.mean, s.mean
    if band_of(s.n, band) == "minmax":
        finite = [v for v in values if math.isfinite(v)]
        return min(finite), max(finite)
    return s.lo, s.hi


def _n_text(ns: list[int]) -> str:
    """Converged seeds per point: 'n=5', or 'n=5/5/3 by depth' where they differ."""
    return f"n={ns[0]}" if len(set(ns)) == 1 else "n=" + "/".join(map(str, ns)) + " by depth"


def _paper_marks(ax, pts: list[tuple[float, float]], *, marker: str, color, label: str, shift=None,
                 value_axis: str = "y") -> None:
    """The papers' errors (%) at `pts` (position, error), drawn after the axis's range is set from
    our data: inside it as markers, outside it as an edge mark with the value, so the paper's
    number never sets the range. `shift`: a display-space offset (the dodge of the point's kind)."""
    shift = shift or IdentityTransform()
    lo, hi = ax.get_ylim() if value_axis == "y" else ax.get_xlim()
    lo, hi = min(lo, hi), max(lo, hi)
    ms = 7 if marker == "*" else 4
    off = [(a, v) for a, v in pts if not lo <= v <= hi]
    ax.plot([], [], marker, color=color, mec="k", mew=0.5, ms=ms,
            label=label + (" (off the axis: value at its edge)" if off else ""))
    for a, v in pts:
        xy = (a, v) if value_axis == "y" else (v, a)
        if (a, v) not in off:
            ax.plot(*xy, marker, color=color, mec="k", mew=0.5, ms=ms, transform=ax.transData + shift)
            continue
        edge = 0.03 if v < lo else 0.97
        if value_axis == "y":
            tr = blended_transform_factory(ax.transData, ax.transAxes) + shift
            where, arrow, text_at = (a, edge), "v" if v < lo else "^", (4, 0)
        else:
            tr = blended_transform_factory(ax.transAxes, ax.transData) + shift
            where, arrow, text_at = (edge, a), "<" if v < lo else ">", (0, 5)
        ax.plot(*where, arrow, color=color, mec="k", mew=0.5, ms=4, transform=tr, clip_on=False)
        ax.annotate(f"{v:g}%", where, xycoords=tr, xytext=text_at, textcoords="offset points", fontsize=5.5,
                    va="bottom" if value_axis == "x" else "center", color="0.2")


def plot_final_vs_depth(study: Study, out: Path, band: str = "ci", partial: str | None = None) -> list[Path]:
    """Final training and test error against depth, one line per kind: mean and 95% t-interval
    (min..max below 3 seeds), n per depth in the legend, the papers' numbers as stars."""
    lines = study.lines()
    groups = [(line, kind, sorted((v for v in vs if v.kind == kind), key=lambda v: v.depth))
              for line, vs in lines.items() for kind in sorted({v.kind for v in vs})]
    palette = sns.color_palette("colorblind", len(groups))
    fig = Figure(figsize=(TWO_COLUMNS, 3.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    marks = []  # the papers' numbers, drawn once the data has set the range
    depths = sorted({v.depth for v in study.by_variant})
    refs = tables.paper_numbers(study)
    lows: list[float] = []
    highs: list[float] = []  # shifted artists escape autoscaling: limits are set below
    bands: set[str] = set()
    for ax, attr, title in ((axes[0], "final_train", "final training error"),
                            (axes[1], "final_test", "final test error")):
        for k, ((line, kind, vs), color) in enumerate(zip(groups, palette)):
            # Dodge the kinds sideways by a few points so intervals at one depth do not overlap.
            dx = (k - (len(groups) - 1) / 2) * 5
            shift = ScaledTranslation(dx / 72, 0, fig.dpi_scale_trans)
            data, top = ax.transData + shift, blended_transform_factory(ax.transData, ax.transAxes) + shift
            values = [[getattr(r, attr) if r.converged else math.nan for r in study.by_variant[v]] for v in vs]
            sums = [stats.summarize(vals, (0.0, 1.0)) for vals in values]
            bars = [_interval(s_, vals, band) for s_, vals in zip(sums, values)]
            bands |= {band_of(s_.n, band) for s_ in sums if s_.n > 1}
            xs = np.array([v.depth for v in vs], float)
            mean = np.array([s_.mean for s_ in sums]) * 100
            err = np.array([[m - 100 * lo, 100 * hi - m] for m, (lo, hi) in zip(mean, bars)]).T
            lows += [100 * lo for lo, _ in bars]
            highs += [100 * hi for _, hi in bars]
            fails = sum(_fails(study.by_variant[v]) for v in vs)
            label = (vs[0].kind_label() + (f" [{line[0]}, {line[1]}, w{line[2]}]" if len(lines) > 1 else "")
                     + f" ({_n_text([s_.n for s_ in sums])}" + (f", {fails} fail" if fails else "")
                     + (", min..max bars" if band == "ci" and any(1 < s_.n < stats.MIN_SEEDS_FOR_CI for s_ in sums)
                        else "") + ")")
            ax.errorbar(xs, mean, yerr=err, fmt="-o", color=color, ms=3.5, lw=1.2, capsize=2.5, label=label,
                        transform=data)
            for xv, v in zip(xs, vs):
                for r in (r for r in study.by_variant[v] if r.diverged):
                    y = getattr(r, attr)
                    if math.isfinite(y):
                        highs.append(100 * y)
                        ax.plot(xv, 100 * y, "x", color=color, ms=6, mew=1.5, transform=data)
                    else:  # no finite error: mark it on the top edge instead of dropping it
                        ax.plot(xv, 0.97, "x", color=color, ms=6, mew=1.5, transform=top, clip_on=False)
            if attr == "final_test":
                for p_, marker in zip(paper.PAPERS, ("*", "D")):
                    pts = [(v.depth, refs[v][p_].error) for v in vs
                           if p_ in refs.get(v, {}) and refs[v][p_].error is not None]
                    if pts:
                        marks.append((ax, pts, marker, color, f"{p_} ({paper.STAT[p_]}), {vs[0].kind_label()}",
                                      shift))
        ax.set_title(title)
        ax.set_xlabel("depth (layers)")
        lo, hi = depths[0], depths[-1]
        if hi / max(lo, 1) > 4:
            ax.set_xscale("log")
            f = (hi / lo) ** 0.12
            ax.set_xlim(lo / f, hi * f)
        else:
            ax.set_xlim(lo - 0.12 * (hi - lo), hi + 0.12 * (hi - lo))
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.minorticks_off()
    if any(r.diverged for r in study.runs):
        axes[1].plot([], [], "x", color="0.3", label="diverged run (not in mean)")
    axes[0].set_ylabel("error (%)")
    _fit_ylim(axes[0], lows, highs)
    for ax, pts, marker, color, label, shift in marks:
        _paper_marks(ax, pts, marker=marker, color=color, label=label, shift=shift)
    entries = sorted(zip(*axes[1].get_legend_handles_labels()),
                     key=lambda hl: (hl[1].startswith("He "), hl[1].startswith("diverged")))
    fig.legend(*zip(*entries), loc="outside lower center", ncol=min(len(entries), 2), fontsize=5.5)
    what = " or ".join({"ci": "95% t-interval", "minmax": "min..max (under 3 seeds)"}[b] for b in sorted(bands))
    _suptitle(fig, f"{study.name}: mean over converged seeds" + (f", bars = {what}" if what else ""), partial)
    return save_figure(fig, out, "final_error_vs_depth")


def plot_layer_responses(study: Study, out: Path, partial: str | None = None) -> list[Path]:
    """He 2016a Fig. 7: std of each 3x3 layer's response, in layer order and sorted by magnitude.
    Colour is depth and the marker the kind of net (open circles plain), lines all solid: dashes
    mean training error in this figure set."""
    colors = _depth_colors(study)
    markers = {}
    fig = Figure(figsize=(TWO_COLUMNS, 4.6), layout="constrained")
    axes = fig.subplots(2, 1)
    for v, runs in study.by_variant.items():
        curves = [r.curves["layer_response_std"] for r in runs if r.converged and "layer_response_std" in r.curves]
        if not curves:
            continue
        steps, mean, _, _, n = _aggregate(curves, "ci")
        marker = markers.setdefault(v.kind, "osD^v"[len(markers) % 5])
        face = "white" if not v.residual else colors[v.depth]
        look = dict(color=colors[v.depth], lw=1.0, marker=marker, ms=2.6, mfc=face, mew=0.7)
        label = f"{v.label(with_line=len(study.lines()) > 1)} (n={int(n.min())})"
        axes[0].plot(steps + 1, mean, "-", label=label, **look)
        # Averaged in layer order first, then sorted: the sorted curve of the seeds' mean profile.
        srt = np.sort(mean[np.isfinite(mean)])[::-1]
        axes[1].plot(np.arange(1, len(srt) + 1), srt, "-", label=label, **look)
    axes[0].set_xlabel("layer index (original)")
    axes[1].set_xlabel("layer index (sorted by magnitude)")
    for ax in axes:
        ax.set_ylabel("std")
        integer_ticks(ax.xaxis)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=5.5)
    _suptitle(fig, f"{study.name}: std of each 3x3 layer's response (He 2016a Fig. 7), "
              "mean over converged seeds", partial)
    return save_figure(fig, out, "layer_responses")


def ablation_groups(study: Study) -> dict[tuple, list[VariantAxes]]:
    """(family, width, depth) -> its variants, where two or more of them are residual nets that
    differ (in shortcut, block, pre-activation, a further axis or a recipe override): the setting
    of He 2016a Table 3 and 2016b Tables 1-2."""
    groups: dict[tuple, list[VariantAxes]] = defaultdict(list)
    for v in study.by_variant:
        groups[(v.family, v.width, v.depth)].append(v)
    # Plain vs a single residual net is the plain-vs-residual comparison already; an ablation
    # needs two residual variants (the plain net then stays in the panel as the reference).
    return {k: vs for k, vs in sorted(groups.items(), key=lambda kv: (kv[0][0], parse_float(kv[0][1]), kv[0][2]))
            if sum(v.residual for v in vs) > 1}


def plot_ablation(study: Study, groups: dict[tuple, list[VariantAxes]], out: Path, band: str = "ci",
                  partial: str | None = None) -> list[Path]:
    """Error by variant at a fixed depth: points with 95% t-intervals (min..max below 3 seeds),
    the papers' test error as stars."""
    rows = max(len(vs) for vs in groups.values())
    refs = tables.paper_numbers(study)
    fig = Figure(figsize=(figure_width(len(groups)), 0.4 * rows + 2.1), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    bands: set[str] = set()
    for ax, ((family, width, depth), vs) in zip(axes, groups.items()):
        labels, lows, highs, marks = [], [], [], defaultdict(list)
        for i, v in enumerate(vs):
            runs = study.by_variant[v]
            for attr, marker, color, name, dy in (("final_test", "o", "C0", "test", -0.12),
                                                  ("final_train", "s", "C1", "train", 0.12)):
                values = [getattr(r, attr) if r.converged else math.nan for r in runs]
                s = stats.summarize(values, (0.0, 1.0))
                if s.n:
                    lo, hi = _interval(s, values, band)
                    bands |= {band_of(s.n, band)} if s.n > 1 else set()
                    lows.append(100 * lo)
                    highs.append(100 * hi)
                    ax.errorbar(100 * s.mean, i + dy, xerr=[[100 * (s.mean - lo)], [100 * (hi - s.mean)]],
                                fmt=marker, color=color, ms=4, capsize=2.5,
                                mfc=color if name == "test" else "white", label=name if i == 0 else None)
                for r in (r for r in runs if r.diverged and math.isfinite(getattr(r, attr))):
                    ax.plot(100 * getattr(r, attr), i + dy, "x", color=color, ms=6, mew=1.5)
                    highs.append(100 * getattr(r, attr))
            for p_ in paper.PAPERS:
                num = refs.get(v, {}).get(p_)
                if num is not None and num.error is not None:
                    marks[p_].append((i - 0.12, num.error))
            block = f" [{v.block}]" if len({u.block for u in vs}) > 1 else ""
            labels.append(f"{v.label()}{block} ({_seeds_text(runs)})")
        ax.set_yticks(range(len(vs)), labels)
        ax.set_ylim(len(vs) - 0.5, -0.5)
        if lows and highs:
            a, b = min(lows), max(highs)
            pad = max(0.08 * (b - a), 0.5)
            ax.set_xlim(max(0.0, a - pad), min(100.0, b + pad))
        for p_, marker in zip(paper.PAPERS, ("*", "D")):
            if marks[p_]:
                _paper_marks(ax, marks[p_], marker=marker, color="k", label=f"{p_} test ({paper.STAT[p_]})",
                             value_axis="x")
        ax.set_xlabel("final error (%)")
        ax.set_title(f"{family}, depth {depth}, width {width}")
    entries = dict(kv for ax in axes for kv in zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncol=min(len(entries), 2),
               fontsize=5.5)
    what = " or ".join({"ci": "95% t-interval", "minmax": "min..max (under 3 seeds)"}[b] for b in sorted(bands))
    _suptitle(fig, f"{study.name}: mean over converged seeds; x = diverged run"
              + (f"\nbars = {what}" if what else ""), partial)
    return save_figure(fig, out, "ablation")


def _no_ablation_reason(study: Study) -> str:
    residual = sorted({v.kind_label() for v in study.by_variant if v.residual})
    if not residual:
        return "ablation: no residual runs"
    return ("ablation: no depth has two or more residual variants to compare (at most one per depth, "
            f"of: {', '.join(residual)}); plain vs residual is in plain_vs_residual.*")


# What `write_all` may write: an earlier draw's file of these names that this one does not redraw
# is removed (and listed in summary.md), so no figure of older runs sits beside the new ones.
STEMS = ("curves", "curves_by_depth", "final_error_vs_depth", "training_loss", "layer_responses", "ablation",
         "variants", "plain_vs_residual", "versus_original", "degradation", "imagenet")
EXTENSIONS = ("pdf", "png", "csv", "md", "tex")


def _earlier_draws(out: Path) -> set[Path]:
    return {p for stem in STEMS for ext in EXTENSIONS
            for p in [*out.glob(f"{stem}.{ext}"), *out.glob(f"{stem}_*.{ext}")]}


def write_all(study: Study, out: Path, x: str = "epoch", band: str = "ci", partial: str | None = None):
    """Every figure and table the data supports; returns (paths written, skipped + why, notes).
    `partial` (why the study is unfinished, e.g. "12 of 30 runs finished") marks every figure's
    title, every table's caption and summary.md."""
    earlier = _earlier_draws(out)
    written: list[Path] = []
    skipped: list[str] = []
    notes: list[str] = []
    runs = study.runs
    if not runs:
        skipped.append("every figure and table: no FINISHED confirm/train runs yet")
    else:
        with rc_context(paper_style()):
            if any(r.converged and "test_error" in r.curves for r in runs):
                paths, n = plot_curves(study, out, x, band, partial)
                written += paths
                notes += n
            else:
                skipped.append("training curves: no converged run logged test_error")
            if any(r.converged and r.curves.get("train_loss") for r in runs):
                written += plot_training_loss(study, out, x, band, partial)
            else:
                skipped.append("training loss: no converged run logged train_loss")
            if len({v.depth for v in study.by_variant}) > 1:
                written += plot_final_vs_depth(study, out, band, partial)
            else:
                skipped.append("final error vs depth: only one depth")
            if any(r.converged and "layer_response_std" in r.curves for r in runs):
                written += plot_layer_responses(study, out, partial)
            else:
                skipped.append("layer responses: no run logged layer_response_std")
            groups = ablation_groups(study)
            if groups:
                written += plot_ablation(study, groups, out, band, partial)
            else:
                skipped.append(_no_ablation_reason(study))
        for stem, table, why in (("variants", tables.variant_table(study), ""),
                                 ("plain_vs_residual", tables.plain_vs_residual_table(study),
                                  "no depth with both plain and residual runs"),
                                 ("versus_original", tables.versus_original_table(study),
                                  "no shortcut kind or activation order beside an original unit at its depth"),
                                 ("degradation", tables.degradation_table(study),
                                  "no kind of net with two or more depths"),
                                 ("imagenet", tables.imagenet_table(study), "no ImageNet-family runs")):
            if table is None or not table.rows:
                skipped.append(f"table {stem}: {why}")
                continue
            if partial:
                table = dataclasses.replace(table, title=f"{table.title} (PARTIAL: {partial})")
            for ext, render in (("csv", tables.to_csv), ("md", tables.to_markdown),
                                ("tex", lambda t, stem=stem: tables.to_latex(t, label=f"{study.name}-{stem}"))):
                path = out / f"{stem}.{ext}"
                path.write_text(render(table), encoding="utf-8")
                written.append(path)
    removed = sorted(earlier - set(written))
    for path in removed:
        path.unlink()
    summary = out / "summary.md"
    summary.write_text(tables.summary_markdown(study, [p.name for p in written], skipped, notes, partial,
                                               [p.name for p in removed]), encoding="utf-8")
    return written + [summary], skipped, notes
