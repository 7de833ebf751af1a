"""`gradients`: Balduzzi, Frean, Leary, Lewis, Ma & McWilliams 2017, *The Shattered Gradients
Problem: If resnets are the answer, then what is the question?* (Secs. 2-4, Figs. 1-3), at
initialisation and at the end of training; and the gradient norm of each layer.

* Shattered gradients: inputs x(t) = (1 - t) a + t b on a line between two test images,
  t in [0, 1] at `sweep_points` points; g(t) = d f(x(t)) / dx, f the logit of a's class. Balduzzi
  et al. use a 1-D input and a scalar output and show that a deep plain net's g(t) looks like
  white noise (no correlation between neighbouring t) while a ResNet's looks like brown noise.
  Here g(t) is an image-shaped vector and the correlation of g(t_i) and g(t_j) is their Pearson
  correlation over its entries; reported as the autocorrelation over lags (mean over i and over
  `sweeps` image pairs) and the full t x t correlation matrix (their Fig. 3's covariance).
* At initialisation the run's own architecture is re-initialised with its seed, as the trainer
  does (torch.manual_seed(seed)). Balduzzi et al. take their BN nets in training mode on a batch;
  a sweep is not a batch of independent images, so here BN is in eval mode with running
  statistics measured on test images (at init: the exact average over `images` test images,
  otherwise BN would be the identity) and, at the end, the trained ones.
* Gradient norm per layer: |dL/dW| of every conv and linear weight, L the cross-entropy of
  `grad_batch` training images (unaugmented), BN in training mode as in a training step: at
  init, at the end, and at any per-epoch checkpoint that still exists. Checkpoints are deleted
  when a trial finishes, so usually only init and end are there; the missing epochs are noted.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
import torch.nn.functional as F

from . import summary
from .loading import calibrate_bn, images

NAME = "gradients"
PAPER = "Balduzzi et al. 2017"
OPTIONS = ("sweep_points", "sweeps", "grad_batch", "images")


def sweep_gradients(net, a: torch.Tensor, b: torch.Tensor, cls: int, points: int) -> torch.Tensor:
    """(points, D) input gradients of logit `cls` along the segment a -> b (net in eval mode)."""
    t = torch.linspace(0, 1, points).view(-1, 1, 1, 1)
    x = ((1 - t) * a + t * b).requires_grad_(True)
    net.eval()
    (grad,) = torch.autograd.grad(net(x)[:, cls].sum(), x)
    return grad.flatten(1)


def correlations(g: torch.Tensor) -> np.ndarray:
    """(P, D) -> (P, P) Pearson correlations between the rows."""
    z = g.double() - g.double().mean(1, keepdim=True)
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return (z @ z.T).numpy()


def autocorrelation(c: np.ndarray) -> list[float]:
    """Mean correlation at each lag 0..P-1 of a (P, P) correlation matrix."""
    return [float(np.mean(np.diagonal(c, lag))) for lag in range(len(c))]


def shattering(net, x, y, points: int, sweeps: int, keep_matrix: bool = True) -> dict:
    """The autocorrelation over sweeps (mean over the image pairs) and, with `keep_matrix`, the
    t x t correlation matrix to 3 decimals (points^2 numbers a net: kept for the figure's)."""
    mats = [correlations(sweep_gradients(net, x[2 * s], x[2 * s + 1], int(y[2 * s]), points))
            for s in range(min(sweeps, len(x) // 2))]
    c = np.mean(mats, axis=0)
    acf = autocorrelation(c)
    out = {"acf": acf, "lag1": acf[1] if len(acf) > 1 else float("nan")}
    if keep_matrix:
        out["corr"] = np.round(c, 3).tolist()
    return out


def layer_gradient_norms(net, x, y) -> list[float]:
    """|dL/dW| per conv/linear weight in depth order; BN in training mode on this batch (a copy of
    the net: its running statistics stay as they were)."""
    net = copy.deepcopy(net).train()
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    return [float(p.grad.norm()) for _, p in weights(net)]


def weights(net) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in net.named_parameters() if p.dim() > 1]


def compute(ctx, run) -> dict:
    o = ctx.opts
    data = ctx.data(run)
    xt, yt = images(data, "test", max(o.images, 2 * o.sweeps))
    xb, yb = images(data, "train", o.grad_batch)
    init = calibrate_bn(run.build(), xt[:o.images])
    end = ctx.net(run)
    out = {"init": shattering(init, xt, yt, o.sweep_points, o.sweeps),
           "end": shattering(end, xt, yt, o.sweep_points, o.sweeps, keep_matrix=False),
           "layers": [n for n, _ in weights(end)],
           "norms": {"0": layer_gradient_norms(init, xb, yb)}, "notes": []}
    epochs = ctx.epochs(run)
    found = ctx.checkpoint(run)
    if found is not None:
        epoch, state = found
        net = run.build()
        net.load_state_dict(state)
        out["norms"][str(epoch)] = layer_gradient_norms(net, xb, yb)
    out["norms"][str(epochs)] = layer_gradient_norms(end, xb, yb)
    missing = [e for e in range(1, epochs) if str(e) not in out["norms"]]
    if missing:
        at = ", ".join("init" if k == "0" else f"epoch {k}" for k in sorted(out["norms"], key=int))
        out["notes"].append(f"epochs {_ranges(missing)}: no checkpoint kept (deleted when the trial "
                            f"finished); gradient norms at {at}")
    return out


def _ranges(xs: list[int]) -> str:
    """[1, 2, 3, 5] -> '1..3, 5'."""
    out, start = [], xs[0]
    for a, b in zip(xs, xs[1:] + [None]):
        if b != a + 1:
            out.append(str(start) if start == a else f"{start}..{a}")
            start = b
    return ", ".join(out)


# -- report ----------------------------------------------------------------------------------------
def report(done: dict, runs, out: Path) -> tuple[dict, list]:
    res = {r.run_id: done[r.run_id] for r in runs if r.run_id in done}
    table = {}
    for when in ("init", "end"):
        vals = {rid: v[when]["lag1"] for rid, v in res.items()}
        table[f"lag1_{when}"] = summary.by_variant(vals, runs)
        table[f"paired_lag1_{when}"] = summary.paired_twins(vals, runs)
    notes = sorted({n for v in res.values() for n in v["notes"]})
    table["notes"] = notes
    return table, _plot(res, runs, out)


def _plot(res, runs, out) -> list:
    groups = summary.variants(runs)
    colors = summary.colors(groups)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.0))
    for v, rs in groups.items():
        got = [res[r.run_id] for r in rs if r.run_id in res]
        if not got:
            continue
        c, name = colors[v], f"{summary.label(v)} ({summary.n_text(got)})"
        for when, ls in (("init", "--"), ("end", "-")):
            acf = [g[when]["acf"] for g in got]
            lags = list(range(len(acf[0])))
            summary.band(axes[0], lags, acf, c, name if when == "end" else None, ls=ls)
            last = max(got[0]["norms"], key=int) if when == "end" else "0"
            norms = [g["norms"][last] for g in got if last in g["norms"]]
            summary.band(axes[1], list(range(len(norms[0]))), norms, c, None, ls=ls)
    axes[0].set(xlabel="lag (sweep steps)", ylabel="gradient correlation",
                title="(a) shattered gradients: autocorrelation (Balduzzi Fig. 2)")
    axes[1].set(xlabel="layer (conv / linear weight, input to output)", ylabel="|dL/dW|", yscale="log",
                title="(b) gradient norm per layer")
    for ax in axes[:2]:
        summary.integer_ticks(ax.xaxis)
    first = next(((v, res[rs[0].run_id]) for v, rs in groups.items() if rs[0].run_id in res), None)
    _corr_panels(fig, axes[2], res, groups)
    handles, labels = axes[0].get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", ls="--", label="at initialisation"),
                Line2D([], [], color="0.3", ls="-", label="end of training")]
    fig.legend(handles, labels + ["at initialisation", "end of training"], loc="lower center",
               ncol=min(len(handles), 6), fontsize=6)
    fig.text(0.99, 0.01, summary.BAND_NOTE, ha="right", fontsize=5.5)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    paths = summary.save(fig, out, "gradients") if first else []
    plt.close(fig)
    return paths


def _corr_panels(fig, ax, res, groups) -> None:
    """(c): the t x t correlation at init of the deepest plain net and its residual twin, side by
    side in one image (left: plain, right: residual; Balduzzi Fig. 3)."""
    got = {v: res[rs[0].run_id] for v, rs in groups.items() if rs[0].run_id in res}
    plain = [v for v in got if not getattr(v, "residual", False)]
    resid = [v for v in got if getattr(v, "residual", False)]
    if not plain or not resid:
        ax.axis("off")
        return
    p = max(plain, key=lambda v: v.depth)
    r = next((v for v in resid if v.depth == p.depth and v.line == p.line), max(resid, key=lambda v: v.depth))
    m = np.hstack([np.asarray(got[p]["init"]["corr"]), np.asarray(got[r]["init"]["corr"])])
    ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_title(f"(c) correlation at init: {summary.label(p)} | {summary.label(r)} (seed {groups[p][0].seed})",
                 fontsize=6)
    ax.set(xlabel="t (sweep point), plain | residual", ylabel="t")
