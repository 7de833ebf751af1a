"""Scoring a network: loss and error of a split (1-crop or 10-crop), and the layer responses of
He 2016a Fig. 7."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.network import ResNet

from . import distributed
from .config import TrainConfig
from .data import Dataset, Split
from .execution import MixedPrecision, eval_batch_size, memory_format


@torch.no_grad()
def evaluate(model: MixedPrecision, data: Dataset, split: Split, cfg: TrainConfig) -> tuple[float, float]:
    """(mean loss, error) of `split`, in eval mode, without augmentation.

    Each rank evaluates its shard and the sums are added up. Multi-crop batches (N, K, C, H, W)
    (ten_crop) score the mean of the K crops' softmax (He 2016a Sec. 3.4, 10-crop testing)."""
    ctx = distributed.current()
    distributed.sync_buffers(model, ctx)  # every shard is scored by the model rank 0 checkpoints
    model.eval()
    loss = torch.zeros((), device=data.device, dtype=torch.float64)
    wrong = torch.zeros((), device=data.device, dtype=torch.float64)
    for x, y in data.eval_batches(split, eval_batch_size(cfg, data.device), ctx.rank, ctx.world):
        crops = x.shape[1] if x.dim() == 5 else 0
        out = model(x.flatten(0, 1) if crops else x.contiguous(memory_format=memory_format(cfg)))
        if crops:
            # log of the mean probability, as a logsumexp: a crop's underflowing softmax is no -inf
            out = torch.logsumexp(out.view(len(y), crops, -1).log_softmax(-1), 1) - math.log(crops)
            loss += F.nll_loss(out, y, reduction="sum")
        else:
            loss += F.cross_entropy(out, y, reduction="sum")
        wrong += (out.argmax(1) != y).sum()
    loss, wrong = distributed.all_sum(torch.stack([loss, wrong]), ctx).tolist()
    return loss / len(split), wrong / len(split)


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
