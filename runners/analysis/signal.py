"""`signal`: Brock, De & Smith 2021, *Characterizing Signal Propagation to Close the Performance
Gap in Unnormalized ResNets* (Sec. 3, Fig. 1: signal propagation plots), at initialisation.

A batch of `signal_images` inputs drawn from N(0, 1) of the net's input shape is passed through
the freshly initialised net (the run's or the spec's architecture, torch.manual_seed(seed) as
the trainer does), BN in training mode (batch statistics), as Brock et al. do. At the output of
the stem and of every block (after its addition and activation) are recorded, over the
channels c of that (N, C, H, W) activation:

* average channel squared mean: mean_c (mean_{N,H,W} x_c)^2,
* average channel variance: mean_c var_{N,H,W} x_c,
* and for every block the average channel variance of its residual branch's output F(x) (for a
  plain block, its conv stack: the block without a shortcut is all branch).

Needs no training: `ablate analyze --init SPEC` draws it for every variant of a spec (He 2016b's
activation orders and shortcut kinds included) over the spec's seeds.

Differences: Brock et al. plot ResNet-600-style nets of ImageNet's shape (4 stages); here each
variant as its spec defines it, CIFAR or ImageNet. Their Fig. 1 shows the BN-ReLU ResNets with
a residual variance that resets at each transition; here every order is drawn on the same axes.
The summary is the average channel variance at the last block (a net whose variance grows with
depth keeps growing; BN's resets hold it near 1 for pre-activation orders at the transitions).
"""
from __future__ import annotations

import torch
import matplotlib.pyplot as plt

from . import summary

NAME = "signal"
PAPER = "Brock et al. 2021"
OPTIONS = ("signal_images",)


def _channel_stats(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    return float((mean ** 2).mean()), float(var.mean())


@torch.no_grad()
def propagate(net, n: int, seed: int) -> dict:
    """Signal propagation at init of `net` on n Gaussian inputs (BN in training mode)."""
    size = net.spec.input_size
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    means, variances, branch = [], [], []
    blocks = net.blocks()
    hooks = [net.stem.register_forward_hook(lambda _m, _i, o: _record(o, means, variances))]
    for b in blocks:
        hooks.append(b.register_forward_hook(lambda _m, _i, o: _record(o, means, variances)))
        original = b.branch

        def wrapped(pre, original=original):
            out = original(pre)
            branch.append(_channel_stats(out)[1])
            return out
        b.branch = wrapped  # an instance attribute shadows the method, removed below
    state = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        net.train()
        net(x)
    finally:
        for h in hooks:
            h.remove()
        for b in blocks:
            del b.branch
        net.load_state_dict(state)  # training-mode BN moved the running statistics
        net.eval()
    return {"mean_sq": means, "var": variances, "branch_var": branch, "images": n,
            "final_var": variances[-1]}


def _record(o, means, variances) -> None:
    m, v = _channel_stats(o)
    means.append(m)
    variances.append(v)


def compute(ctx, run) -> dict:
    return propagate(run.build(), ctx.opts.signal_images, run.seed)


# -- report ----------------------------------------------------------------------------------------
def report(done: dict, runs, out) -> tuple[dict, list]:
    res = {r.run_id: done[r.run_id] for r in runs if r.run_id in done}
    final = {rid: v["final_var"] for rid, v in res.items()}
    table = {"final_var": summary.by_variant(final, runs)}
    if any(getattr(v, "residual", None) is not None for v in summary.variants(runs)):
        table["paired_final_var"] = summary.paired_twins(final, runs)
    return table, _plot(res, runs, out)


def _plot(res, runs, out) -> list:
    groups = summary.variants(runs)
    # One row per (family, block, depth): an order's or shortcut's lines side by side.
    rows: dict = {}
    for v in groups:
        rows.setdefault(_row(v), []).append(v)
    fig, axes = plt.subplots(len(rows), 3, figsize=(10, 2.4 * len(rows) + 0.4), squeeze=False)
    colors = summary.colors(groups)
    for (name, vs), ax_row in zip(rows.items(), axes):
        for v in vs:
            got = [res[r.run_id] for r in groups[v] if r.run_id in res]
            if not got:
                continue
            label = f"{summary.label(v)} ({summary.n_text(got)})"
            for ax, key, first in zip(ax_row, ("mean_sq", "var", "branch_var"), (0, 0, 1)):
                xs = list(range(first, first + len(got[0][key])))
                summary.band(ax, xs, [g[key] for g in got], colors[v], label if key == "var" else None,
                             marker=".")
        for ax, what in zip(ax_row, ("avg channel squared mean", "avg channel variance",
                                     "residual branch: avg channel var.")):
            ax.set(xlabel="block (0 = stem)", ylabel=what, yscale="log", title=name)
            summary.integer_ticks(ax.xaxis)
        ax_row[1].legend(fontsize=5.5)
    fig.suptitle("Signal propagation at initialisation, Gaussian input, BN in training mode "
                 "(Brock et al. 2021, Fig. 1); " + summary.BAND_NOTE, fontsize=7)
    fig.tight_layout()
    paths = summary.save(fig, out, "signal")
    plt.close(fig)
    return paths


def _row(v) -> str:
    fam, block = getattr(v, "family", "cifar"), getattr(v, "block", "basic")
    return f"{fam} {block}, depth {v.depth}"
