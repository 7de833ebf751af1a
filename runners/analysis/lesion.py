"""`lesion`: Veit, Wilber & Belongie 2016, *Residual Networks Behave Like Ensembles of Relatively
Shallow Networks* (Sec. 4, Figs. 3-5), on a trained net's test images.

* Single-block lesions (Sec. 4.1, Fig. 3): the test error after deleting one block, for every
  block that can be deleted. In a residual block deleting means removing its residual branch and
  keeping the shortcut: y = h(x) (every activation order and shortcut kind keeps what it does
  around the branch: the post-addition ReLU of order (a), a gate's (1 - g) h, a scale's
  shortcut_scale h). In a plain net a block (a same-shape conv pair) is replaced by the identity,
  as Veit et al. do for VGG. Transition blocks (striding or widening: input and output shapes
  differ) are never deleted (Veit et al. delete them once to show they matter; here they are
  kept, so every lesion is a same-shape one).
* Random multi-block lesions (Sec. 4.2, Fig. 4): the error after deleting k random deletable
  blocks, k = 1..n, averaged over `draws` random sets per k (every set when there are fewer).
* Reordering (Sec. 4.3, Fig. 5): k random pairs of same-shape blocks of one stage swapped, the
  error against Kendall's tau between the new order and the original. Veit et al. swap blocks of
  the same dimensionality anywhere in the net; here within a stage, where "same shape" means it.

Differences: Veit et al. use all 10,000 CIFAR-10 test images and ResNet-110 (54 deletable
blocks); here `images` test images drawn at random from the run's own test split (default 500) and the
study's nets. The scalar summary, paired plain vs residual by seed, is the mean increase of the
test error over the intact net's across single-block lesions.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import random

import numpy as np
import torch
import matplotlib.pyplot as plt

from models.network import ResNet

from . import summary
from .loading import images, loss_and_error

NAME = "lesion"
PAPER = "Veit et al. 2016"
OPTIONS = ("images", "draws")


def deletable(net: ResNet) -> list[int]:
    """Indices (in `net.blocks()` order) of the blocks whose input and output shapes agree."""
    out = []
    for i, b in enumerate(net.blocks()):
        first, last = b.conv1, getattr(b, f"conv{b.num_convs}")
        strides = [getattr(b, f"conv{j}").stride != (1, 1) for j in range(1, b.num_convs + 1)]
        if first.in_channels == last.out_channels and not any(strides):
            out.append(i)
    return out


def _zero_branch(pre: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(pre)  # a same-shape block: F(x) has x's shape


@contextlib.contextmanager
def lesioned(net: ResNet, deleted):
    """`net` with blocks `deleted` (indices into net.blocks()) deleted, restored on exit: a
    residual block's branch returns zeros (y = h(x) and whatever wraps the sum), a plain block
    passes its input through."""
    blocks = net.blocks()
    saved = []
    try:
        for i in deleted:
            b = blocks[i]
            if b.is_residual:
                b.branch = _zero_branch  # an instance attribute shadows the method
                saved.append((b, "branch"))
            else:
                b.forward = lambda x: x
                saved.append((b, "forward"))
        yield net
    finally:
        for b, attr in saved:
            delattr(b, attr)


def forward_in_order(net: ResNet, orders: list[list[int]]):
    """net's forward with each stage's blocks run in `orders[s]` (indices within the stage)."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        h = net.stem(x)
        for stage, order in zip(net.stages, orders):
            for j in order:
                h = stage[j](h)
        return net.head(h)
    return forward


def kendall_tau(order: list[int]) -> float:
    """Kendall's tau between `order` and 0..n-1 (1: unchanged, -1: reversed)."""
    n = len(order)
    if n < 2:
        return 1.0
    s = sum(np.sign(order[j] - order[i]) for i, j in itertools.combinations(range(n), 2))
    return float(s / (n * (n - 1) / 2))


def compute(ctx, run) -> dict:
    net = ctx.net(run)
    x, y = images(ctx.data(run), "test", ctx.opts.images)
    rng = random.Random(run.seed)
    base = loss_and_error(net, x, y)[1]
    can = deletable(net)
    single = {}
    for i in can:
        with lesioned(net, [i]):
            single[str(i)] = loss_and_error(net, x, y)[1]
    multi = {}
    for k in range(1, len(can) + 1):
        sets = _draw(can, k, ctx.opts.draws, rng)
        errs = []
        for s in sets:
            with lesioned(net, s):
                errs.append(loss_and_error(net, x, y)[1])
        multi[str(k)] = float(np.mean(errs))
    reorder = _reorder(net, x, y, ctx.opts.draws, rng)
    return {"base_error": base, "blocks": len(net.blocks()), "deletable": can, "single": single,
            "multi": multi, "reorder": reorder, "images": len(y),
            "single_increase": float(np.mean([e - base for e in single.values()])) if single else math.nan}


def _draw(items: list[int], k: int, draws: int, rng: random.Random) -> list[list[int]]:
    if math.comb(len(items), k) <= draws:
        return [list(c) for c in itertools.combinations(items, k)]
    seen: set[tuple] = set()
    while len(seen) < draws:
        seen.add(tuple(sorted(rng.sample(items, k))))
    return [list(s) for s in sorted(seen)]


def _reorder(net: ResNet, x, y, draws: int, rng: random.Random) -> list[dict]:
    """Errors after swapping k random same-shape pairs within stages, k = 1..(movable blocks)."""
    can = set(deletable(net))
    movable = [(s, j) for s, stage in enumerate(net.stages) for j in range(len(stage))
               if _offset(net, s, [j])[0] in can]
    pairs = [(a, b) for a, b in itertools.combinations(movable, 2) if a[0] == b[0]]
    out = []
    for k in range(1, min(len(pairs), len(movable)) + 1):
        for _ in range(draws):
            orders = [list(range(len(stage))) for stage in net.stages]
            for (s, a), (_, b) in rng.sample(pairs, min(k, len(pairs))):
                ia, ib = orders[s].index(a), orders[s].index(b)
                orders[s][ia], orders[s][ib] = orders[s][ib], orders[s][ia]
            flat = [j for s, o in enumerate(orders) for j in _offset(net, s, o)]
            out.append({"swaps": k, "tau": kendall_tau(flat),
                        "error": loss_and_error(net, x, y, forward=forward_in_order(net, orders))[1]})
    return out


def _offset(net: ResNet, s: int, order: list[int]) -> list[int]:
    start = sum(len(st) for st in net.stages[:s])
    return [start + j for j in order]


# -- report ----------------------------------------------------------------------------------------
def report(done: dict, runs, out) -> tuple[dict, list]:
    """Per variant over seeds: the single-lesion error increase, the error vs k deleted, the
    reordering errors; paired residual - plain by seed; figures."""
    res = {r.run_id: done[r.run_id] for r in runs if r.run_id in done}
    scalar = {rid: v["single_increase"] for rid, v in res.items()}
    table = {"single_increase": summary.by_variant(scalar, runs),
             "base_error": summary.by_variant({rid: v["base_error"] for rid, v in res.items()}, runs),
             "paired_single_increase": summary.paired_twins(scalar, runs)}
    paths = _plot(res, runs, out)
    return table, paths


def _plot(res: dict, runs, out) -> list:
    groups = summary.variants(runs)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.0))
    colors = summary.colors(groups)
    for v, rs in groups.items():
        got = [res[r.run_id] for r in rs if r.run_id in res]
        if not got:
            continue
        c = colors[v]
        # (a) error per deleted block, over the deletable blocks (their index in the net)
        idx = got[0]["deletable"]
        per_block = [[g["single"][str(i)] - g["base_error"] for i in idx] for g in got]
        summary.band(axes[0], idx, per_block, c, f"{summary.label(v)} ({summary.n_text(got)})", marker="o",
                     scale=100)
        # (b) error vs k deleted blocks
        ks = sorted({int(k) for g in got for k in g["multi"]})
        summary.band(axes[1], ks, [[g["multi"].get(str(k), math.nan) for k in ks] for g in got], c, None,
                     marker="o", scale=100)
        # (c) reordering: error vs Kendall tau (each draw a point)
        taus = [p["tau"] for g in got for p in g["reorder"]]
        errs = [100 * p["error"] for g in got for p in g["reorder"]]
        axes[2].scatter(taus, errs, s=6, color=c, alpha=0.6)
    axes[0].set(xlabel="deleted block (index in the net)", ylabel="test error increase (points)",
                title="(a) single-block lesions (Veit Fig. 3)")
    axes[1].set(xlabel="blocks deleted (k, random)", ylabel="test error (%)",
                title="(b) k random blocks deleted (Fig. 4)")
    axes[2].set(xlabel="Kendall tau to the original order", ylabel="test error (%)",
                title="(c) blocks swapped within stages (Fig. 5)")
    for ax in axes[:2]:
        summary.integer_ticks(ax.xaxis)
    axes[2].invert_xaxis()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=min(len(groups), 6),
               bbox_to_anchor=(0.5, -0.02), fontsize=6)
    fig.text(0.99, 0.01, summary.BAND_NOTE, ha="right", fontsize=5.5)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    paths = summary.save(fig, out, "lesion")
    plt.close(fig)
    return paths
