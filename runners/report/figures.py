"""`ablate figures`: He et al. 2016a's figures and tables regenerated from the MLflow store alone.

Nothing is retrained and Optuna is not needed: every number comes from the runs' tags, params
and metric histories (the contract in `runners.tracking.runs`), read by `runners.tracking.results`: FINISHED runs of the
`confirm`/`train` stages, never `search` trials. Runs tagged diverged=true are counted and drawn as x markers but kept out of means and tests,
where one exploded run would otherwise set the result. Statistics live in `runners.report.stats`, tables in `runners.report.tables`.

Figures (PDF with TrueType fonts + PNG): training curves (Fig. 6), final error vs depth, layer
responses (Fig. 7), error by variant at a fixed depth (the Table 3 comparison). Tables
(CSV, Markdown, LaTeX): per variant, plain vs residual per depth, degradation per family.
"""
from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..tracking.results import RunRecord, Study, Variant, num
from . import stats, tables


# -- drawing ------------------------------------------------------------------------------------
def _rc() -> dict:
    import seaborn as sns
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper")}
    # TrueType (Type 42) fonts: journals reject Type 3, and text stays selectable.
    rc.update({"pdf.fonttype": 42, "ps.fonttype": 42, "savefig.dpi": 200, "legend.frameon": True,
               "axes.titlesize": 8.5, "legend.fontsize": 6.5})
    return rc


def _save(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.pdf", out / f"{stem}.png"]
    # No creation date: the same store gives the same bytes.
    fig.savefig(paths[0], metadata={"CreationDate": None, "ModDate": None})
    fig.savefig(paths[1])
    return paths


def _aggregate(series: list[dict[int, float]], band: str):
    """Steps, mean, band low/high and count over runs at each step (runs may end early)."""
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
            lo, hi = mean - half, mean + half
    return np.array(steps), mean, lo, hi, n


BAND_TEXT = {"ci": "band: 95% t-interval of the mean over seeds",
             "minmax": "band: min..max over seeds"}


def _depth_colors(study: Study) -> dict[int, tuple]:
    import seaborn as sns
    depths = sorted({v.depth for v in study.by_variant})
    return dict(zip(depths, sns.color_palette("colorblind", max(len(depths), 1))))


def _seeds_text(runs: list[RunRecord]) -> str:
    n = sum(r.converged for r in runs)
    d = len(runs) - n
    return f"n={n}" + (f", {d} diverged" if d else "")


def plot_curves(study: Study, out: Path, x: str, band: str) -> tuple[list[Path], list[str]]:
    """He 2016a Fig. 6: one panel per kind of net (plain, each residual kind) in each line."""
    from matplotlib.figure import Figure
    colors, paths, notes = _depth_colors(study), [], []
    runs_all = [r for r in study.runs if r.converged]
    if x == "iteration" and any("iteration" not in r.curves for r in runs_all):
        notes.append("curves: some runs lack the `iteration` metric, plotted against epoch instead")
        x = "epoch"
    lines = study.lines()
    for line, variants in lines.items():
        kinds = sorted({v.kind for v in variants})
        fig = Figure(figsize=(3.0 * len(kinds) + 0.4, 2.7), layout="constrained")
        axes = fig.subplots(1, len(kinds), sharey=True, squeeze=False)[0]
        tops = []
        for ax, kind in zip(axes, kinds):
            for v in [v for v in variants if v.kind == kind]:
                runs = study.by_variant[v]
                ok = [r for r in runs if r.converged]
                c = colors[v.depth]
                for metric, style, width in (("train_error", "--", 0.8), ("test_error", "-", 1.4)):
                    curves = [r.curves[metric] for r in ok if metric in r.curves]
                    if not curves:
                        continue
                    steps, mean, lo, hi, _ = _aggregate(curves, band)
                    xs = _x_values(ok, steps, x)
                    label = f"{v.depth}-layer ({_seeds_text(runs)})" if metric == "test_error" else None
                    ax.plot(xs, 100 * mean, style, color=c, lw=width, label=label)
                    ax.fill_between(xs, 100 * lo, 100 * hi, color=c, alpha=0.15, lw=0)
                    tail = mean[xs >= xs.min() + 0.2 * (xs.max() - xs.min())]
                    tops.append(np.nanmax(tail) * 100 if np.isfinite(tail).any() else 0)
                for r in (r for r in runs if r.diverged and r.curves.get("test_error")):
                    steps = sorted(r.curves["test_error"])
                    xs = _x_values([r], np.array(steps), x) if x == "iteration" and "iteration" in r.curves \
                        else np.array(steps, float)
                    ys = np.array([r.curves["test_error"][s] for s in steps]) * 100
                    good = np.isfinite(ys)
                    if good.any():
                        ax.plot(xs[good], ys[good], ":", color=c, lw=0.7)
                        ax.plot(xs[good][-1:], ys[good][-1:], "x", color=c, ms=6, mew=1.5)
            v0 = next(v for v in variants if v.kind == kind)
            ax.set_title(("plain" if not v0.residual else v0.kind_label()) + " nets")
            ax.set_xlabel("iteration" if x == "iteration" else "epoch")
            ax.legend(loc="upper right")
        axes[0].set_ylabel("error (%)")
        # The first epochs sit near chance (90%); clip them, as Fig. 6 does, so the gaps that
        # matter (a few points at the end) stay visible.
        axes[0].set_ylim(0, min(100.0, 1.5 * max(tops, default=50)) or 100)
        if any(r.diverged for v in variants for r in study.by_variant[v]):
            axes[0].plot([], [], "x:", color="0.3", label="diverged run (not in mean)")
            axes[0].legend(loc="upper right")
        fig.suptitle(f"{study.name}: dashed = training error, solid = test error; {BAND_TEXT[band]}",
                     fontsize=7.5)
        paths += _save(fig, out, "curves" + _line_suffix(line, lines))
    return paths, notes


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


def plot_final_vs_depth(study: Study, out: Path) -> list[Path]:
    """Final training and test error against depth, one line per kind, mean and 95% t-interval."""
    import seaborn as sns
    from matplotlib.figure import Figure
    from matplotlib.transforms import ScaledTranslation, blended_transform_factory
    lines = study.lines()
    groups = [(line, kind, sorted((v for v in vs if v.kind == kind), key=lambda v: v.depth))
              for line, vs in lines.items() for kind in sorted({v.kind for v in vs})]
    palette = sns.color_palette("colorblind", len(groups))
    fig = Figure(figsize=(6.6, 2.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    depths = sorted({v.depth for v in study.by_variant})
    ref = tables.paper_reference_points(study)
    ys: list[float] = [e for _, e in ref]  # shifted artists escape autoscaling: limits are set below
    for ax, attr, title in ((axes[0], "final_train", "final training error"),
                            (axes[1], "final_test", "final test error")):
        for k, ((line, kind, vs), color) in enumerate(zip(groups, palette)):
            # Dodge the kinds sideways by a few points so intervals at one depth do not overlap.
            dx = (k - (len(groups) - 1) / 2) * 5
            shift = ScaledTranslation(dx / 72, 0, fig.dpi_scale_trans)
            data, top = ax.transData + shift, blended_transform_factory(ax.transData, ax.transAxes) + shift
            sums = [stats.summarize(getattr(r, attr) for r in study.by_variant[v] if r.converged) for v in vs]
            xs = np.array([v.depth for v in vs], float)
            mean = np.array([s.mean for s in sums]) * 100
            err = np.array([[s.mean - s.lo, s.hi - s.mean] if s.n > 1 else [0, 0] for s in sums]).T * 100
            ys += list(mean + err[1])
            label = vs[0].kind_label() + (f" [{line[0]}, {line[1]}, w{line[2]}]" if len(lines) > 1 else "")
            ax.errorbar(xs, mean, yerr=err, fmt="-o", color=color, ms=3.5, lw=1.2, capsize=2.5, label=label,
                        transform=data)
            for xv, yv, v in zip(xs, mean, vs):
                if np.isfinite(yv):
                    ax.annotate(f"n={sum(r.converged for r in study.by_variant[v])}", (xv, yv),
                                xytext=(dx + 3, 2), textcoords="offset points", fontsize=5.5, color=color)
                for r in (r for r in study.by_variant[v] if r.diverged):
                    y = getattr(r, attr)
                    if math.isfinite(y):
                        ys.append(100 * y)
                        ax.plot(xv, 100 * y, "x", color=color, ms=6, mew=1.5, transform=data)
                    else:  # no finite error: mark it on the top edge instead of dropping it
                        ax.plot(xv, 0.97, "x", color=color, ms=6, mew=1.5, transform=top, clip_on=False)
        if attr == "final_test" and ref:
            ax.plot([d for d, _ in ref], [e for _, e in ref], "k*", ms=6, label="He 2016a Table 6 (ResNet, A)")
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
    finite = [y for y in ys if np.isfinite(y)]
    axes[0].set_ylim(0, 1.1 * max(finite) if finite else 100)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4))
    fig.suptitle(f"{study.name}: mean over seeds, bars = 95% t-interval, n = converged seeds", fontsize=7.5)
    return _save(fig, out, "final_error_vs_depth")


def plot_layer_responses(study: Study, out: Path) -> list[Path]:
    """He 2016a Fig. 7: std of each 3x3 layer's response, in layer order and sorted by magnitude."""
    from matplotlib.figure import Figure
    colors = _depth_colors(study)
    styles = {}
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    axes = fig.subplots(2, 1)
    for v, runs in study.by_variant.items():
        curves = [r.curves["layer_response_std"] for r in runs if r.converged and "layer_response_std" in r.curves]
        if not curves:
            continue
        steps, mean, _, _, n = _aggregate(curves, "ci")
        style = styles.setdefault(v.kind, ["--", "-", "-.", ":", (0, (5, 1))][len(styles) % 5])
        label = f"{v.label(with_line=len(study.lines()) > 1)} (n={int(n.min())})"
        axes[0].plot(steps + 1, mean, style, color=colors[v.depth], lw=1.1, label=label)
        # Averaged in layer order first, then sorted: the sorted curve of the seeds' mean profile.
        srt = np.sort(mean[np.isfinite(mean)])[::-1]
        axes[1].plot(np.arange(1, len(srt) + 1), srt, style, color=colors[v.depth], lw=1.1, label=label)
    axes[0].set_xlabel("layer index (original)")
    axes[1].set_xlabel("layer index (sorted by magnitude)")
    for ax in axes:
        ax.set_ylabel("std")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3)
    fig.suptitle(f"{study.name}: std of each 3x3 layer's response (He 2016a Fig. 7), "
                 "mean over converged seeds", fontsize=7.5)
    return _save(fig, out, "layer_responses")


def ablation_groups(study: Study) -> dict[tuple, list[Variant]]:
    """(family, width, depth) -> variants differing in shortcut/block/preact: Table 3's setting."""
    groups: dict[tuple, list[Variant]] = defaultdict(list)
    for v in study.by_variant:
        groups[(v.family, v.width, v.depth)].append(v)
    # Plain vs a single residual net is the plain-vs-residual comparison already; an ablation
    # needs two residual variants (the plain net then stays in the panel as the reference).
    return {k: vs for k, vs in sorted(groups.items(), key=lambda kv: (kv[0][0], num(kv[0][1]), kv[0][2]))
            if len({(v.shortcut, v.block, v.preact) for v in vs if v.residual}) > 1}


def plot_ablation(study: Study, groups: dict[tuple, list[Variant]], out: Path) -> list[Path]:
    """Error by variant at a fixed depth: points with 95% t-intervals (He 2016a Table 3)."""
    from matplotlib.figure import Figure
    rows = max(len(vs) for vs in groups.values())
    fig = Figure(figsize=(3.4 * len(groups) + 0.6, 0.35 * rows + 1.3), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, ((family, width, depth), vs) in zip(axes, groups.items()):
        labels = []
        for i, v in enumerate(vs):
            runs = study.by_variant[v]
            for attr, marker, color, name, dy in (("final_test", "o", "C0", "test", -0.12),
                                                  ("final_train", "s", "C1", "train", 0.12)):
                s = stats.summarize(getattr(r, attr) for r in runs if r.converged)
                if s.n:
                    err = [[100 * (s.mean - s.lo)], [100 * (s.hi - s.mean)]] if s.n > 1 else None
                    ax.errorbar(100 * s.mean, i + dy, xerr=err, fmt=marker, color=color, ms=4, capsize=2.5,
                                mfc=color if name == "test" else "white", label=name if i == 0 else None)
                for r in (r for r in runs if r.diverged and math.isfinite(getattr(r, attr))):
                    ax.plot(100 * getattr(r, attr), i + dy, "x", color=color, ms=6, mew=1.5)
            block = f" [{v.block}]" if len({u.block for u in vs}) > 1 else ""
            labels.append(f"{v.label()}{block} ({_seeds_text(runs)})")
        ax.set_yticks(range(len(vs)), labels)
        ax.set_ylim(len(vs) - 0.5, -0.5)
        ax.set_xlabel("final error (%)")
        ax.set_title(f"{family}, depth {depth}, width {width}")
        ax.legend(loc="best")
    fig.suptitle(f"{study.name}: mean, bars = 95% t-interval over seeds; x = diverged run", fontsize=7.5)
    return _save(fig, out, "ablation")


def write_all(study: Study, out: Path, x: str = "epoch", band: str = "ci"):
    """Every figure and table the data supports; returns (paths written, skipped + why, notes)."""
    from matplotlib import rc_context
    written: list[Path] = []
    skipped: list[str] = []
    notes: list[str] = []
    runs = study.runs
    if not runs:
        skipped.append("every figure and table: no FINISHED confirm/train runs yet")
    else:
        with rc_context(_rc()):
            if any(r.converged and "test_error" in r.curves for r in runs):
                paths, n = plot_curves(study, out, x, band)
                written += paths
                notes += n
            else:
                skipped.append("training curves: no converged run logged test_error")
            if len({v.depth for v in study.by_variant}) > 1:
                written += plot_final_vs_depth(study, out)
            else:
                skipped.append("final error vs depth: only one depth")
            if any(r.converged and "layer_response_std" in r.curves for r in runs):
                written += plot_layer_responses(study, out)
            else:
                skipped.append("layer responses: no run logged layer_response_std")
            groups = ablation_groups(study)
            if groups:
                written += plot_ablation(study, groups, out)
            else:
                skipped.append("ablation (Table 3): no depth with variants differing in shortcut/block/preact")
        for stem, table, why in (("variants", tables.variant_table(study), ""),
                                 ("plain_vs_residual", tables.plain_vs_residual_table(study),
                                  "no depth with both plain and residual runs"),
                                 ("degradation", tables.degradation_table(study),
                                  "no kind of net with two or more depths")):
            if table is None or not table.rows:
                skipped.append(f"table {stem}: {why}")
                continue
            for ext, render in (("csv", tables.to_csv), ("md", tables.to_markdown), ("tex", tables.to_latex)):
                path = out / f"{stem}.{ext}"
                path.write_text(render(table), encoding="utf-8")
                written.append(path)
    summary = out / "summary.md"
    summary.write_text(tables.summary_markdown(study, [p.name for p in written], skipped, notes),
                       encoding="utf-8")
    return written + [summary], skipped, notes
