"""`landscape`: Li, Xu, Taylor, Studer & Goldstein 2018, *Visualizing the Loss Landscape of Neural
Nets* (tomgoldstein/loss-landscape), around a trained net's final weights.

* Directions (Sec. 4, "filter normalization"): a Gaussian random direction d with the weights'
  shapes, each filter d_ij (slice i of a weight's first dimension: a conv's output filter, a
  linear layer's row) rescaled to the norm of the weight's filter, d_ij <- d_ij / |d_ij| |w_ij|.
  Parameters with one dimension (BN weights and biases, the classifier's bias) get d = 0: the
  reference's default `--xignore biasbn` (net_plotter.normalize_directions_for_weights). BN
  buffers are not parameters and stay the trained running statistics; BN is in eval mode.
* 1D slice L(w + a d), a in [-1, 1] (Fig. 2-3's style; the reference's `--x=-1:1:51`), and 2D
  slice L(w + a d1 + b d2) on [-1, 1]^2 (Fig. 5-6: ResNet-56 with and without skips), each
  direction drawn with its own seed.
* 1D linear interpolation between two seeds' solutions (Goodfellow et al. 2015, as Li et al. Sec.
  3 use it): L((1 - t) w_a + t w_b), t in [-0.5, 1.5]; BN running statistics are interpolated
  with the weights (the reference's `dir_type=states`).

Differences: the reference evaluates on all 50,000 training images and a 51-point (1D) or
51x51 (2D) grid; here `train_images` training images of the run drawn at random (unaugmented,
normalised as in training) and `grid` / `grid2d` points (odd, so the origin is on the grid),
sized for a few minutes per net on 2 cores. Li et al. compare ResNet-56 with and without skip
connections; here every plain/residual twin of the study. Summaries: the mean rise of the loss
over the 1D and 2D grids above L(w), and the interpolation barrier, max over t in [0, 1] of
L(t) - ((1 - t) L(0) + t L(1)).
"""
from __future__ import annotations

import numpy as np
import torch
import matplotlib.pyplot as plt

from ..report import stats
from . import summary
from .loading import images, loss_and_error

NAME = "landscape"
PAPER = "Li et al. 2018"
OPTIONS = ("train_images", "grid", "grid2d")


def random_direction(net, seed: int) -> list[torch.Tensor]:
    """A filter-normalised Gaussian direction over `net.parameters()` (0 on 1-D parameters)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for w in net.parameters():
        d = torch.randn(w.shape, generator=g, dtype=w.dtype)
        if w.dim() <= 1:
            d.zero_()  # 'biasbn': BN weights/biases and biases are not perturbed
        else:
            normalize_filters(d, w.detach())
        out.append(d)
    return out


def normalize_filters(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """d's filters (slices of dim 0) rescaled in place to the norms of w's filters."""
    dn = d.flatten(1).norm(dim=1)
    wn = w.flatten(1).norm(dim=1)
    d.mul_((wn / (dn + 1e-10)).view(-1, *[1] * (d.dim() - 1)))
    return d


@torch.no_grad()
def slice_losses(net, x, y, directions: list[list[torch.Tensor]], coords) -> list[tuple[float, float]]:
    """[(loss, error)] of net at w + sum_k c_k d_k for each coordinate tuple c; weights restored."""
    params = list(net.parameters())
    origin = [p.detach().clone() for p in params]
    out = []
    try:
        for c in coords:
            for p, w0, *ds in zip(params, origin, *directions):
                p.copy_(w0)
                for ck, dk in zip(c, ds):
                    p.add_(dk, alpha=float(ck))
            out.append(loss_and_error(net, x, y))
    finally:
        for p, w0 in zip(params, origin):
            p.copy_(w0)
    return out


def axis(n: int, lo: float = -1.0, hi: float = 1.0) -> list[float]:
    return [float(v) for v in np.linspace(lo, hi, n)]


def compute(ctx, run) -> dict:
    net = ctx.net(run)
    x, y = images(ctx.data(run), "train", ctx.opts.train_images)
    d1, d2 = random_direction(net, 2 * run.seed + 1), random_direction(net, 2 * run.seed + 2)
    a = axis(ctx.opts.grid)
    one = slice_losses(net, x, y, [d1], [(v,) for v in a])
    b = axis(ctx.opts.grid2d)
    two = slice_losses(net, x, y, [d1, d2], [(u, v) for u in b for v in b])
    loss0 = one[len(a) // 2][0]
    loss2d = np.array([loss for loss, _ in two]).reshape(len(b), len(b))
    return {"alpha": a, "loss_1d": [loss for loss, _ in one], "error_1d": [e for _, e in one],
            "axis_2d": b, "loss_2d": loss2d.tolist(), "loss": loss0, "images": len(y),
            "rise_1d": float(np.mean([loss for loss, _ in one]) - loss0), "rise_2d": float(loss2d.mean() - loss0)}


def interpolation_pairs(runs) -> list[tuple]:
    """Consecutive seeds of each variant: (s0, s1), (s1, s2), ..."""
    out = []
    for rs in summary.variants(runs).values():
        out += list(zip(rs, rs[1:]))
    return out


@torch.no_grad()
def interpolate(ctx, a_run, b_run) -> dict:
    a, b = ctx.net(a_run), ctx.net(b_run)
    x, y = images(ctx.data(a_run), "train", ctx.opts.train_images)
    sa, sb = a.state_dict(), b.state_dict()
    ts = sorted(set(axis(ctx.opts.grid, -0.5, 1.5)) | {0.0, 1.0})  # both solutions on the grid
    net = a_run.build()
    losses, errors = [], []
    for t in ts:
        net.load_state_dict({k: (torch.lerp(v, sb[k], t) if v.is_floating_point() else v) for k, v in sa.items()})
        loss, err = loss_and_error(net.eval(), x, y)
        losses.append(loss)
        errors.append(err)
    inside = [(t, loss) for t, loss in zip(ts, losses) if 0 <= t <= 1]
    l0, l1 = losses[ts.index(0.0)], losses[ts.index(1.0)]
    barrier = max(loss - ((1 - t) * l0 + t * l1) for t, loss in inside)
    return {"t": ts, "loss": losses, "error": errors, "barrier": float(barrier),
            "seeds": [a_run.seed, b_run.seed]}


# -- report ----------------------------------------------------------------------------------------
def interp_key(a, b) -> str:
    return f"interp:{a.run_id}:{b.run_id}"


def report(done: dict, runs, out) -> tuple[dict, list]:
    res = {r.run_id: done[r.run_id] for r in runs if r.run_id in done}
    table = {}
    for key in ("rise_1d", "rise_2d", "loss"):
        vals = {rid: v[key] for rid, v in res.items()}
        table[key] = summary.by_variant(vals, runs)
        if key != "loss":
            table[f"paired_{key}"] = summary.paired_twins(vals, runs)
    interp = {}
    for v, rs in summary.variants(runs).items():
        got = [done[interp_key(a, b)] for a, b in zip(rs, rs[1:]) if interp_key(a, b) in done]
        if got:
            interp[v] = got
    table["interpolation_barrier"] = [
        {"variant": summary.label(v), "pairs": len(got),
         **{k: getattr(stats.summarize([g["barrier"] for g in got]), k) for k in ("mean", "lo", "hi")}}
        for v, got in interp.items()]
    return table, _plot_1d(res, interp, runs, out) + _plot_2d(res, runs, out)


def _plot_1d(res, interp, runs, out) -> list:
    groups = summary.variants(runs)
    colors = summary.colors(groups)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.0))
    for v, rs in groups.items():
        got = [res[r.run_id] for r in rs if r.run_id in res]
        if got:
            summary.band(axes[0], got[0]["alpha"], [g["loss_1d"] for g in got], colors[v],
                         f"{summary.label(v)} ({summary.n_text(got)})")
        curves = interp.get(v, [])
        if curves:
            summary.band(axes[1], curves[0]["t"], [p["loss"] for p in curves], colors[v], None)
    axes[0].set(xlabel="alpha (filter-normalised random direction)", ylabel="training loss",
                title="(a) 1D slice around the final weights (Li Fig. 3)", yscale="log")
    axes[1].set(xlabel="t: (1 - t) w(seed i) + t w(seed i+1)", ylabel="training loss",
                title="(b) interpolation between seeds (Li Sec. 3)", yscale="log")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=min(len(groups), 6), fontsize=6)
    fig.text(0.99, 0.01, summary.BAND_NOTE, ha="right", fontsize=5.5)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    paths = summary.save(fig, out, "landscape_1d")
    plt.close(fig)
    return paths


def _plot_2d(res, runs, out) -> list:
    """Contours of the 2D slice (first seed of each variant), Li et al. Fig. 5's layout."""
    groups = summary.variants(runs)
    shown = [(v, next(res[r.run_id] for r in rs if r.run_id in res)) for v, rs in groups.items()
             if any(r.run_id in res for r in rs)]
    if not shown:
        return []
    cols = min(len(shown), 6)
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows + 0.3), squeeze=False)
    levels = np.linspace(0, 1, 11)
    for ax, (v, g) in zip(axes.flat, shown):
        b = np.asarray(g["axis_2d"])
        loss = np.log10(np.asarray(g["loss_2d"]))
        norm = (loss - loss.min()) / max(loss.max() - loss.min(), 1e-12)
        ax.contour(b, b, norm.T, levels=levels, linewidths=0.6, cmap="viridis")
        ax.set_title(f"{summary.label(v)}\nloss {g['loss']:.2f}..{float(np.max(g['loss_2d'])):.1f}", fontsize=6)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=5)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle("2D slices, log loss min..max scaled to 0..1 per net (first seed)", fontsize=7)
    fig.tight_layout()
    paths = summary.save(fig, out, "landscape_2d")
    plt.close(fig)
    return paths
