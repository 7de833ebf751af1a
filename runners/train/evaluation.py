"""Scoring a network: loss, top-1 and top-5 error of a split (1-crop or 10-crop; He 2016a Table 4's
multi-scale testing), and the layer responses of He 2016a Fig. 7."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.network import ResNet

from . import distributed
from .config import TrainConfig
from .data import Dataset, Split
from .execution import MixedPrecision, eval_batch_size, memory_format


TOP5 = 5
CENTER = 4  # the center crop's place among the ten (stream.EvalImages: four corners, center, flips)


def _wrong(out: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """How many of the batch's labels are not among the top `k` scores."""
    return (out.topk(min(k, out.shape[1]), 1).indices != y[:, None]).all(1).sum()


@torch.no_grad()
def evaluate(model: MixedPrecision, data: Dataset, split: Split, cfg: TrainConfig) -> dict[str, float]:
    """{"loss", "error", "error_top5"} of `split`, in eval mode, without augmentation; with
    multi-crop batches also "error_1crop" and "error_top5_1crop", the center crop's alone.

    Each rank evaluates its shard and the sums are added up. Multi-crop batches (N, K, C, H, W)
    (ten_crop) score the mean of the K crops' softmax (He 2016a Sec. 3.4, 10-crop testing); the
    center crop is one of them, so the 1-crop numbers of the same net cost nothing more.
    Top-5 is left out with 5 classes or fewer, where it is 0 by construction."""
    ctx = distributed.current()
    distributed.sync_buffers(model, ctx)  # every shard is scored by the model rank 0 checkpoints
    model.eval()
    sums = torch.zeros(5, device=data.device, dtype=torch.float64)  # loss, wrong, wrong@5, center's
    crops = 0
    for x, y in data.eval_batches(split, eval_batch_size(cfg, data.device), ctx.rank, ctx.world):
        crops = x.shape[1] if x.dim() == 5 else 0
        out = model(x.flatten(0, 1) if crops else x.contiguous(memory_format=memory_format(cfg)))
        if crops:
            logp = out.view(len(y), crops, -1).log_softmax(-1)
            center = logp[:, CENTER] if crops == 10 else logp[:, 0]
            sums[3] += _wrong(center, y, 1)
            sums[4] += _wrong(center, y, TOP5)
            # log of the mean probability, as a logsumexp: a crop's underflowing softmax is no -inf
            out = torch.logsumexp(logp, 1) - math.log(crops)
            sums[0] += F.nll_loss(out, y, reduction="sum")
        else:
            sums[0] += F.cross_entropy(out, y, reduction="sum")
        sums[1] += _wrong(out, y, 1)
        sums[2] += _wrong(out, y, TOP5)
    totals = [v / len(split) for v in distributed.all_sum(sums, ctx).tolist()]
    classes = data.num_classes
    out = {"loss": totals[0], "error": totals[1]}
    if classes > TOP5:
        out["error_top5"] = totals[2]
    if crops:
        out["error_1crop"] = totals[3]
        if classes > TOP5:
            out["error_top5_1crop"] = totals[4]
    return out


@torch.no_grad()
def evaluate_multiscale(model: ResNet, data, split, scales: tuple[int, ...], flip: bool = True,
                        device: torch.device | None = None) -> dict[str, float]:
    """He 2016a Table 4's testing of a trained net: {"error_multiscale", "error_top5_multiscale"}.

    Sec. 3.4: "we adopt the fully-convolutional form as in [41, 13], and average the scores at
    multiple scales (images are resized such that the shorter side is in {224, 256, 384, 480,
    640})". The whole resized image goes through the net: its global average pool and linear
    classifier are the fully-convolutional form (a 1x1 conv of the last maps, averaged, is the
    same linear map of their average). With `flip`, each scale also scores the mirrored image, as
    [41] (VGG's dense evaluation, whose form the paper adopts) does; the paper does not say, and
    its 10-crop testing flips too. Scores are softmax probabilities, averaged over every view.
    One image at a time (sizes differ), on `device`, in fp32; rank 0 scores the whole split."""
    model.eval()
    device = device or next(model.parameters()).device
    wrong = torch.zeros(2, dtype=torch.float64)
    for views, y in data.multiscale_views(split, scales, flip):
        probs = sum(model(v.to(device)).softmax(-1).sum(0) for v in views) / sum(len(v) for v in views)
        top = probs.topk(min(TOP5, probs.numel())).indices.cpu()
        wrong[0] += float(top[0] != y)
        wrong[1] += float(y not in top)
    out = {"error_multiscale": wrong[0].item() / len(split)}
    if data.num_classes > TOP5:
        out["error_top5_multiscale"] = wrong[1].item() / len(split)
    return out


@torch.no_grad()
def layer_responses(model: ResNet, data: Dataset, split: Split, batch_size: int = 250) -> list[dict]:
    """He 2016a Fig. 7: the std of each 3x3 layer's response (after BN, before the addition and
    the nonlinearity) over `split`, in eval mode and fp32; the std is over all of a layer's
    outputs (images, channels, positions). Statistics are taken inside the forward hook, before
    any in-place ReLU that follows can overwrite the tensor."""
    model.eval()
    points = model.response_modules()
    sums = torch.zeros(len(points), 2, dtype=torch.float64, device=data.device)
    counts = [0] * len(points)

    def hook(i: int):
        def record(module, inputs, out):
            sums[i, 0] += out.sum(dtype=torch.float64)
            sums[i, 1] += out.double().square().sum()
            counts[i] += out.numel()
        return record

    handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(points)]
    try:
        for x, _ in data.eval_batches(split, batch_size):
            model(x.flatten(0, 1) if x.dim() == 5 else x)  # ten_crop: every crop is a response
    finally:
        for h in handles:
            h.remove()
    sums = sums.cpu()
    out = []
    for i, (name, _) in enumerate(points):
        mean, sq = sums[i, 0].item() / counts[i], sums[i, 1].item() / counts[i]
        out.append({"index": i, "layer": name, "std": math.sqrt(max(sq - mean * mean, 0.0))})
    return out
