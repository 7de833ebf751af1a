"""`cka`: Kornblith, Norouzi, Lee & Hinton 2019, *Similarity of Neural Network Representations
Revisited* (linear CKA, Sec. 4-6), over a fixed set of test images.

Linear CKA between representations X (n x p) and Y (n x q) of the same n images is
HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = X X^T, L = Y Y^T (Kornblith eq. 4: centred
Grams, <HKH, HLH>_F). When the features of all images do not fit at once (`cka_images` above
`cka_batch`), the minibatch estimator of Nguyen, Raghu & Kornblith 2021 (*Do Wide and Deep
Networks Learn the Same Things?*, Sec. 3.1) is used: the unbiased HSIC_1 of Song et al. 2012
summed over minibatches k, sum_k HSIC_1(K_k, L_k) / sqrt(sum_k HSIC_1(K_k, K_k) sum_k HSIC_1(L_k, L_k)),
which needs only each batch's b x b Gram matrices.

Representations: the stem's output and every block's output (after its addition and
activation), flattened per image (C*H*W), in eval mode. Computed layer x layer within each net
(Kornblith Fig. 5; Nguyen Fig. 1's block structure), and layer x layer between plain/residual
twins (same depth, same seed; Kornblith Fig. 8 compares nets across initialisations).

Differences: Kornblith et al. use 10,000 CIFAR-10 test images and Nguyen et al. 10,000 in
minibatches of 256; here `cka_images` test images drawn at random (default 256, one batch: plain
linear CKA). Summaries: the mean CKA of adjacent blocks within a net (residual nets are
expected to keep neighbouring blocks alike), and the mean CKA of corresponding layers of twins.
"""
from __future__ import annotations

import numpy as np
import torch
import matplotlib.pyplot as plt

from . import summary
from .loading import images

NAME = "cka"
PAPER = "Kornblith et al. 2019"
OPTIONS = ("cka_images", "cka_batch")


# -- the estimators --------------------------------------------------------------------------------
def gram(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) features -> (n, n) linear Gram matrix, float64."""
    f = x.flatten(1).double()
    return f @ f.T


def _center(k: torch.Tensor) -> torch.Tensor:
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def hsic_biased(k: torch.Tensor, l: torch.Tensor) -> float:
    """tr(K H L H) / (n-1)^2 (Gretton et al. 2005), the HSIC of Kornblith eq. 3."""
    n = k.shape[0]
    return float((_center(k) * _center(l)).sum() / (n - 1) ** 2)


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> float:
    """Song et al. 2012's unbiased HSIC_1 (n >= 4), as Nguyen et al. 2021 eq. 2."""
    n = k.shape[0]
    k = k.clone().fill_diagonal_(0)
    l = l.clone().fill_diagonal_(0)
    one_k, one_l = k.sum(1), l.sum(1)
    term = (k * l).sum() + one_k.sum() * one_l.sum() / ((n - 1) * (n - 2)) - 2 * (one_k @ one_l) / (n - 2)
    return float(term / (n * (n - 3)))


def cka_from_grams(ks: list[torch.Tensor], ls: list[torch.Tensor]) -> float:
    """Linear CKA from the per-batch Grams of two representations: one batch -> Kornblith's
    (biased HSIC), several -> Nguyen et al.'s minibatch estimator (unbiased HSIC_1)."""
    hsic = hsic_biased if len(ks) == 1 else hsic_unbiased
    kl = sum(hsic(k, l) for k, l in zip(ks, ls))
    kk = sum(hsic(k, k) for k in ks)
    ll = sum(hsic(l, l) for l in ls)
    return float(kl / np.sqrt(kk * ll)) if kk > 0 and ll > 0 else float("nan")


def linear_cka(x: torch.Tensor, y: torch.Tensor, batch: int | None = None) -> float:
    """CKA of two feature tensors of the same images (the tests' entry point)."""
    b = batch or len(x)
    ks = [gram(x[i:i + b]) for i in range(0, len(x), b)]
    ls = [gram(y[i:i + b]) for i in range(0, len(y), b)]
    return cka_from_grams(ks, ls)


# -- on a net --------------------------------------------------------------------------------------
def layer_modules(net) -> list[tuple[str, torch.nn.Module]]:
    return [("stem", net.stem)] + [(f"block{i}", b) for i, b in enumerate(net.blocks())]


@torch.no_grad()
def layer_grams(net, x: torch.Tensor, batch: int) -> list[list[torch.Tensor]]:
    """[layer][batch] Gram matrices of each layer's output over x, in minibatches of `batch`."""
    mods = layer_modules(net)
    out: list[list[torch.Tensor]] = [[] for _ in mods]
    hooks = [m.register_forward_hook(lambda _m, _i, o, i=i: out[i].append(gram(o)))
             for i, (_, m) in enumerate(mods)]
    try:
        net.eval()
        for i in range(0, len(x), batch):
            net(x[i:i + batch])
    finally:
        for h in hooks:
            h.remove()
    return out


def cka_matrix(ga, gb) -> list[list[float]]:
    return [[cka_from_grams(a, b) for b in gb] for a in ga]


def compute(ctx, run) -> dict:
    x, _ = images(ctx.data(run), "test", ctx.opts.cka_images)
    g = layer_grams(ctx.net(run), x, ctx.opts.cka_batch)
    m = cka_matrix(g, g)
    adjacent = [m[i][i + 1] for i in range(1, len(m) - 1)]  # block i vs block i+1 (stem excluded)
    return {"layers": [n for n, _ in layer_modules(ctx.net(run))], "cka": m, "images": len(x),
            "minibatch": len(g[0]) > 1, "adjacent": float(np.mean(adjacent)) if adjacent else float("nan")}


def twin_key(plain, residual) -> str:
    return f"twin:{plain.run_id}:{residual.run_id}"


def compare_twins(ctx, plain, residual) -> dict:
    x, _ = images(ctx.data(plain), "test", ctx.opts.cka_images)
    ga = layer_grams(ctx.net(plain), x, ctx.opts.cka_batch)
    gb = layer_grams(ctx.net(residual), x, ctx.opts.cka_batch)
    m = cka_matrix(ga, gb)
    diag = [m[i][i] for i in range(min(len(m), len(m[0])))]
    return {"cka": m, "diagonal": diag, "mean_diagonal": float(np.mean(diag)), "seed": plain.seed}


# -- report ----------------------------------------------------------------------------------------
def report(done: dict, runs, out) -> tuple[dict, list]:
    res = {r.run_id: done[r.run_id] for r in runs if r.run_id in done}
    adjacent = {rid: v["adjacent"] for rid, v in res.items()}
    table = {"adjacent_block_cka": summary.by_variant(adjacent, runs),
             "paired_adjacent_block_cka": summary.paired_twins(adjacent, runs), "twins": []}
    twins = []
    for p, v, pairs in summary.twins(runs):
        got = [done[twin_key(a, b)] for a, b in pairs if twin_key(a, b) in done]
        if got:
            twins.append((p, v, got))
            table["twins"].append({"plain": summary.label(p), "residual": summary.label(v), "pairs": len(got),
                                   "mean_diagonal": float(np.mean([g["mean_diagonal"] for g in got]))})
    return table, _plot(res, runs, twins, out)


def _heat(ax, m, title):
    im = ax.imshow(np.asarray(m, float), vmin=0, vmax=1, cmap="magma", origin="lower")
    ax.set_title(title, fontsize=6)
    ax.grid(False)
    ax.tick_params(labelsize=5)
    summary.integer_ticks(ax.xaxis)
    summary.integer_ticks(ax.yaxis)
    return im


def _plot(res, runs, twins, out) -> list:
    groups = [(v, [res[r.run_id] for r in rs if r.run_id in res]) for v, rs in summary.variants(runs).items()]
    groups = [(v, g) for v, g in groups if g]
    panels = [(f"{summary.label(v)} ({summary.n_text(g)})", np.nanmean([x["cka"] for x in g], axis=0))
              for v, g in groups]
    panels += [(f"{summary.label(p)} x {summary.label(v)} ({summary.n_text(g)})",
                np.nanmean([x["cka"] for x in g], axis=0)) for p, v, g in twins]
    if not panels:
        return []
    cols = min(len(panels), 6)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.8 * rows + 0.4), squeeze=False)
    im = None
    for ax, (title, m) in zip(axes.flat, panels):
        im = _heat(ax, m, title)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("linear CKA, layer x layer (0 = stem, i = the i-th block), mean over seeds\n"
                 "within each net; then plain (rows) x residual (columns) twins, same seed", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.93, 0.92))
    fig.colorbar(im, cax=fig.add_axes((0.94, 0.2, 0.012, 0.6)))
    paths = summary.save(fig, out, "cka")
    plt.close(fig)
    return paths
