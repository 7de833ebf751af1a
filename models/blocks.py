"""The block factory: every plain and residual block of every family comes from `Block`.

A block is a branch of convolutions (basic: 3x3, 3x3; bottleneck: 1x1, 3x3, 1x1 with expansion 4;
single: one 3x3, He 2016b Table 3's "1-layer skip") plus a shortcut h(x) chosen by name:

    none  no shortcut at all: the block of a plain network (He et al. 2016a, Sec. 4.1).
    A     parameter-free identity; where the shape changes, stride-2 subsampling and zero-padded
          channels (`PadShortcut`).
    B     identity, and a 1x1 projection where the shape changes.
    C     a 1x1 projection on every block (He 2016b Fig. 2e, "1x1 conv shortcut", is this option).

and He 2016b Table 1's modifications of A's identity, each a module combining h(x) and the
branch F(x) in place of the plain sum (`ScaledSum`, `GatedSum`, `DroppedShortcutSum`):

    scale          shortcut_scale * h(x) + branch_scale * F(x)          (Fig. 2b)
    gate           (1 - g(x)) * h(x) + g(x) * F(x)                      (Fig. 2c, exclusive gating)
    shortcut-gate  (1 - g(x)) * h(x) + F(x)                             (Fig. 2d)
    dropout        dropout(h(x)) + F(x)                                 (Fig. 2f)

and an activation order (He 2016b Fig. 4), for a basic block:

    post             (a) conv-BN-ReLU-conv-BN, addition, ReLU (He 2016a)
    bn-after-add     (b) conv-BN-ReLU-conv, addition, BN, ReLU
    relu-before-add  (c) conv-BN-ReLU-conv-BN-ReLU, addition
    relu-preact      (d) ReLU-conv-BN-ReLU-conv-BN, addition
    preact           (e) BN-ReLU-conv-BN-ReLU-conv, addition

Modules keep torchvision's names (conv1, bn1, ...) so its weights load by a plain key mapping;
every order has the same modules except (e), whose BNs sit before the convs.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .spec import ORDERS, PADDING_SHORTCUTS, SHORTCUTS, ShortcutConfig

EXPANSION = {"basic": 1, "bottleneck": 4, "single": 1}
PRE_ORDERS = ("relu-preact", "preact")  # the orders with an activation before the split
Norm = Callable[[int], nn.BatchNorm2d]


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 'same' convolution; BN follows or precedes it, so a bias would be redundant."""
    assert kernel % 2 == 1, "odd kernels only: 'same' padding is kernel // 2"
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BN whose training-mode statistics are those of sub-batches of `bn_batch` images.

    The papers train with BN over each GPU's share of the batch (He 2016a: 128 images on two GPUs,
    so 64 per BN); one GPU matches that by normalising each sub-batch on its own. Eval mode is
    ordinary BN. The running statistics get one update per step, with the sub-batches' statistics
    averaged (weighted by their size), so the momentum means what it means for ordinary BN.
    A last, smaller sub-batch is normalised on its own.
    """

    def __init__(self, num_features: int, bn_batch: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.bn_batch = bn_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.bn_batch:
            return super().forward(x)
        chunks = x.split(self.bn_batch)  # (N, C, H, W) -> k x (<= bn_batch, C, H, W)
        out = torch.cat([F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps)
                         for c in chunks])
        if self.track_running_stats:
            self._update_running_stats(chunks)
        return out

    @torch.no_grad()
    def _update_running_stats(self, chunks) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        mean = torch.zeros_like(self.running_mean)
        var = torch.zeros_like(self.running_var)
        total = sum(c.shape[0] for c in chunks)
        for c in chunks:
            v, m = torch.var_mean(c, dim=(0, 2, 3), correction=1)  # unbiased, as BN's running var
            mean += m * (c.shape[0] / total)
            var += v * (c.shape[0] / total)
        # (1 - f) x + f y rather than lerp_, which has no vmap batching rule: a packed step
        # (runners/train/packed.py) would loop over its members here
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(var, alpha=factor)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bn_batch={self.bn_batch}"


def norm_layer(bn_batch: int | None = None) -> Norm:
    """BatchNorm2d, or ghost BN over sub-batches of `bn_batch` images."""
    return nn.BatchNorm2d if bn_batch is None else functools.partial(GhostBatchNorm2d, bn_batch=bn_batch)


class PadShortcut(nn.Module):
    """Option A (He 2016a, Sec. 3.3): identity with stride-`stride` subsampling and zero channels.

    `pad` places the zero channels: "append" after the input's (fb.resnet.torch's Concat of the
    input and its zeroed copy) or "split" evenly before and after (akamaster's
    pytorch_resnet_cifar10, F.pad(..., (0, 0, 0, 0, planes//4, planes//4))).
    A named module rather than a lambda, so it shows in repr, pickles, and is visible to the
    complexity counter (it has no parameters and no multiply-adds).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, pad: str = "append") -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"option A cannot reduce channels ({in_ch} -> {out_ch})")
        if pad not in ("append", "split"):
            raise ValueError(f"pad must be one of append, split, got {pad!r}")
        self.in_ch, self.out_ch, self.stride, self.pad = in_ch, out_ch, stride, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_ch - self.in_ch
        before = extra // 2 if self.pad == "split" else 0
        # (N, C, H, W) -> (N, out_ch, H, W): `before` zero channels, the input's, then the rest.
        return F.pad(x, (0, 0, 0, 0, before, extra - before))

    def extra_repr(self) -> str:
        return f"{self.in_ch}, {self.out_ch}, stride={self.stride}" + (", pad=split" if self.pad == "split" else "")


class Projection(nn.Sequential):
    """Options B and C: a 1x1 (strided) conv, with BN unless its input is already normalised.

    Full pre-activation nets take the projection from the block's BN-ReLU output and so have no
    BN here, as in the He 2016b reference code (fb.resnet.torch preresnet.lua).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, preact: bool, norm: Norm = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = conv(in_ch, out_ch, 1, stride)
        if not preact:
            self.bn = norm(out_ch)


def make_shortcut(cfg: ShortcutConfig, in_ch: int, out_ch: int, stride: int, preact: bool,
                  norm: Norm = nn.BatchNorm2d) -> nn.Module | None:
    """The shortcut h(x) of option `cfg.kind`; None for a plain block."""
    kind = cfg.kind
    if kind not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {kind!r}")
    same_shape = in_ch == out_ch and stride == 1
    if kind == "none":
        return None
    if kind == "C" or (kind == "B" and not same_shape):
        return Projection(in_ch, out_ch, stride, preact, norm)
    if same_shape:
        return nn.Identity()
    assert kind in PADDING_SHORTCUTS
    return PadShortcut(in_ch, out_ch, stride, cfg.pad)


class ScaledSum(nn.Module):
    """He 2016b Fig. 2b, constant scaling: shortcut_scale * h(x) + branch_scale * F(x).

    The paper: 0.5 and 1 fails to converge, 0.5 and 0.5 ("frozen gating") reaches 12.35% on
    ResNet-110, against 6.61% for the identity; shortcut_scale 0 is the plain net.
    """

    def __init__(self, shortcut_scale: float, branch_scale: float) -> None:
        super().__init__()
        self.shortcut_scale, self.branch_scale = shortcut_scale, branch_scale

    def forward(self, branch: torch.Tensor, shortcut: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return self.branch_scale * branch + self.shortcut_scale * shortcut

    def extra_repr(self) -> str:
        return f"shortcut_scale={self.shortcut_scale}, branch_scale={self.branch_scale}"


class GatedSum(nn.Module):
    """He 2016b Fig. 2c/2d: g(x) = sigmoid(W_g x + b_g), W_g a 1x1 conv, shortcut scaled by 1 - g(x);
    the branch by g(x) (exclusive gating, as Highway networks) or not at all (shortcut-only).

    The gate reads the unit's input x, the tensor the shortcut reads (Fig. 2 draws the 1x1 conv
    branching off x_l), and is element-wise: one gate per output channel and position, so where
    the shape changes it is a strided in_ch -> out_ch conv. The paper writes no BN in g, so
    there is none; W_g gets the He init of every other conv (fb.resnet.torch initialises every
    conv so, and the paper's "initially the expectation of 1-g(x) is 0.5" at b_g = 0 speaks of a
    g that varies with x), and b_g starts at `bias` (paper: -6 best for both kinds).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, bias: float, exclusive: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=True)
        self.init_bias, self.exclusive = bias, exclusive
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        self.reset_gate()

    def reset_gate(self) -> None:
        nn.init.constant_(self.conv.bias, self.init_bias)

    @property
    def gate_bias(self) -> nn.Parameter:
        """b_g, which `train.gate_bias_decay: false` keeps out of weight decay."""
        return self.conv.bias

    def gate(self, source: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(source))

    def forward(self, branch: torch.Tensor, shortcut: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        g = self.gate(source)
        return (g * branch if self.exclusive else branch) + (1 - g) * shortcut

    def extra_repr(self) -> str:
        return f"b_g={self.init_bias}, exclusive={self.exclusive}"


class DroppedShortcutSum(nn.Module):
    """He 2016b Fig. 2f: dropout on the shortcut's output, F(x) + dropout(h(x)).

    Classic dropout (Srivastava et al. 2014, the paper's [11]): training keeps each element with
    probability 1 - p unscaled, eval multiplies by 1 - p. The paper reasons that dropout
    "statistically imposes a scale of lambda with an expectation of 0.5 on the shortcut", which
    holds for this form and not for inverted dropout (nn.Dropout), whose expectation is 1.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, branch: torch.Tensor, shortcut: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - self.p
        if self.training:
            return branch + shortcut * torch.empty_like(shortcut).bernoulli_(keep)
        return branch + keep * shortcut

    def extra_repr(self) -> str:
        return f"p={self.p}"


def make_combine(cfg: ShortcutConfig, in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """How h(x) and F(x) combine; None for the plain sum (options A, B, C) or no shortcut."""
    if cfg.kind == "scale":
        return ScaledSum(cfg.shortcut_scale, cfg.branch_scale)
    if cfg.kind in ("gate", "shortcut-gate"):
        return GatedSum(in_ch, out_ch, stride, cfg.gate_bias, exclusive=cfg.kind == "gate")
    if cfg.kind == "dropout":
        return DroppedShortcutSum(cfg.shortcut_dropout)
    return None


class Block(nn.Module):
    """One block of any kind, shortcut and activation order.

    `stride_on_first` puts a bottleneck's stride on its first 1x1 conv, as the authors' nets do
    (He 2016a's Caffe ImageNet models; KaimingHe/resnet-1k-layers resnet-pre-act.lua, whose
    1x1 is `Convolution(nInputPlane, nBottleneckPlane, 1, 1, stride, stride)`; also the seed
    tutorial's); otherwise it strides in its 3x3 conv, as torchvision's ResNet v1.5 and
    fb.resnet.torch do. The 1x1 then reads a quarter of the positions, so a ResNet-50 counts
    3.86 GMACs rather than 4.09, with the same parameters. Basic and single blocks have one
    place to stride.

    `input_activated` marks the first block of a pre-activation net (orders d, e): He 2016b
    Sec. 4.1 puts "the first activation right after conv1 and before splitting into two paths",
    i.e. in the stem, so this block adds no pre-activation of its own and both paths read the
    stem's activated output (fb.resnet.torch preresnet.lua, 'no_preact'). Every other block
    whose shortcut is not an identity shares its pre-activation between the branch and the
    shortcut ('both_preact'); an identity carries the raw sum, which is the point of
    pre-activation.
    """

    def __init__(self, kind: str, in_ch: int, out_ch: int, *, stride: int = 1,
                 shortcut: ShortcutConfig = ShortcutConfig.of("A"), order: str = "post",
                 stride_on_first: bool = False, input_activated: bool = False, norm: Norm = nn.BatchNorm2d) -> None:
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        if kind == "basic":
            layout = [(in_ch, out_ch, 3, stride), (out_ch, out_ch, 3, 1)]
        elif kind == "single":
            layout = [(in_ch, out_ch, 3, stride)]
        elif kind == "bottleneck":
            mid = out_ch // EXPANSION[kind]
            s1, s2 = (stride, 1) if stride_on_first else (1, stride)
            layout = [(in_ch, mid, 1, s1), (mid, mid, 3, s2), (mid, out_ch, 1, 1)]
        else:
            raise ValueError(f"block must be basic, bottleneck or single, got {kind!r}")
        self.kind, self.order, self.num_convs = kind, order, len(layout)
        self.input_activated = input_activated and order in PRE_ORDERS
        for i, (ci, co, k, s) in enumerate(layout, start=1):
            setattr(self, f"conv{i}", conv(ci, co, k, s))
            if order != "preact":
                setattr(self, f"bn{i}", norm(co))  # BN normalises each conv's output ...
            elif not (i == 1 and self.input_activated):
                setattr(self, f"bn{i}", norm(ci))  # ... or, in full pre-activation, its input
        self.relu = nn.ReLU(inplace=True)
        self.shortcut_config = shortcut
        self.shortcut = make_shortcut(shortcut, in_ch, out_ch, stride, order == "preact", norm)
        self.combine = make_combine(shortcut, in_ch, out_ch, stride) if self.shortcut is not None else None

    @property
    def is_residual(self) -> bool:
        return self.shortcut is not None

    def _layers(self):
        """[(conv_i, bn_i)]; bn1 is None in the first block of a full pre-activation net."""
        return [(getattr(self, f"conv{i}"), getattr(self, f"bn{i}", None)) for i in range(1, self.num_convs + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self._preactivate(x)
        out = self.branch(pre)
        if self.shortcut is not None:
            source = x if isinstance(self.shortcut, nn.Identity) else pre
            h = self.shortcut(source)
            out = out + h if self.combine is None else self.combine(out, h, source)
        return self._postactivate(out)

    def _preactivate(self, x: torch.Tensor) -> torch.Tensor:
        """Orders d, e: the activation before the split (none in a net's first block)."""
        if self.input_activated or self.order not in PRE_ORDERS:
            return x
        if self.order == "preact":
            return self.relu(self.bn1(x))
        return F.relu(x)  # not in place: an identity shortcut still reads the raw x

    def branch(self, pre: torch.Tensor) -> torch.Tensor:
        """The residual branch F of the (pre-activated) input, before the addition."""
        out = pre
        layers = self._layers()
        for i, (conv_i, bn_i) in enumerate(layers):
            last = i == len(layers) - 1
            if self.order == "preact":
                # (e) BN-ReLU-conv; the first BN-ReLU is the pre-activation.
                out = conv_i(self.relu(bn_i(out)) if i > 0 else out)
                continue
            out = conv_i(out)
            if not (last and self.order == "bn-after-add"):  # (b) moves the last BN past the sum
                out = bn_i(out)
            if not last or self.order == "relu-before-add":  # (c) moves the last ReLU before it
                out = self.relu(out)
        return out

    def _postactivate(self, out: torch.Tensor) -> torch.Tensor:
        """Orders a, b: the activation after the addition."""
        if self.order == "bn-after-add":
            out = self._layers()[-1][1](out)
        if self.order in ("post", "bn-after-add"):
            out = self.relu(out)
        return out

    def _bn_ends_branch(self) -> bool:
        """Whether a BN follows the last conv inside the branch (a, c, d)."""
        return self.order not in ("bn-after-add", "preact")

    def response_modules(self) -> list[nn.Module]:
        """Modules whose outputs are the 3x3 layers' responses of He 2016a Fig. 7.

        The paper's response is a 3x3 layer's output after BN, before the addition and the
        nonlinearity: the BN after each 3x3 conv. Where no BN follows the conv inside the branch
        (full pre-activation; the last conv of order b), the conv output is the closest analogue.
        """
        layers = self._layers()
        out = []
        for i, (conv_i, bn_i) in enumerate(layers):
            if conv_i.kernel_size == (3, 3):
                bn_follows = self.order != "preact" and (i < len(layers) - 1 or self._bn_ends_branch())
                out.append(bn_i if bn_follows else conv_i)
        return out

    def zero_init_last(self) -> None:
        """Zero the last BN of the residual branch (where no BN ends the branch: its last conv),
        so the block starts as its shortcut. A plain block has no branch to silence."""
        if not self.is_residual:
            return
        conv_n, bn_n = self._layers()[-1]
        nn.init.zeros_(bn_n.weight if self._bn_ends_branch() else conv_n.weight)
