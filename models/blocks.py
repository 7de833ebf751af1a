"""The block factory: every plain and residual block of every family comes from `Block`.

A block is a branch of convolutions (basic: 3x3, 3x3; bottleneck: 1x1, 3x3, 1x1 with expansion 4)
plus a shortcut chosen by name:

    none  no shortcut at all: the block of a plain network (He et al. 2016a, Sec. 4.1).
    A     parameter-free identity; where the shape changes, stride-2 subsampling and zero-padded
          channels (`PadShortcut`).
    B     identity, and a 1x1 projection where the shape changes.
    C     a 1x1 projection on every block.

and an activation order:

    post  the original (He 2016a): conv-BN-ReLU ... conv-BN, addition, then ReLU.
    pre   full pre-activation (He 2016b, Fig. 4e): BN-ReLU-conv ..., addition, nothing after it.

Modules keep torchvision's names (conv1, bn1, ...) so its weights load by a plain key mapping.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EXPANSION = {"basic": 1, "bottleneck": 4}


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 'same' convolution; BN follows or precedes it, so a bias would be redundant."""
    assert kernel % 2 == 1, "odd kernels only: 'same' padding is kernel // 2"
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)


class PadShortcut(nn.Module):
    """Option A (He 2016a, Sec. 3.3): identity with stride-`stride` subsampling and zero channels.

    A named module rather than a lambda, so it shows in repr, pickles, and is visible to the
    complexity counter (it has no parameters and no multiply-adds).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"option A cannot reduce channels ({in_ch} -> {out_ch})")
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # (N, C, H, W) -> (N, out_ch, H, W): the new channels are zeros appended after the old ones.
        return F.pad(x, (0, 0, 0, 0, 0, self.out_ch - self.in_ch))

    def extra_repr(self) -> str:
        return f"{self.in_ch}, {self.out_ch}, stride={self.stride}"


class Projection(nn.Sequential):
    """Options B and C: a 1x1 (strided) conv, with BN in post-activation nets.

    Pre-activation nets take the projection from the already normalised input and so have no BN
    here, as in the He 2016b reference code (fb.resnet.torch preresnet.lua).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, preact: bool) -> None:
        super().__init__()
        self.conv = conv(in_ch, out_ch, 1, stride)
        if not preact:
            self.bn = nn.BatchNorm2d(out_ch)


def make_shortcut(kind: str, in_ch: int, out_ch: int, stride: int, preact: bool) -> nn.Module | None:
    """The shortcut of option `kind`; None for a plain block."""
    same_shape = in_ch == out_ch and stride == 1
    if kind == "none":
        return None
    if kind == "C" or (kind == "B" and not same_shape):
        return Projection(in_ch, out_ch, stride, preact)
    if same_shape:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(in_ch, out_ch, stride)
    raise ValueError(f"shortcut must be one of none, A, B, C, got {kind!r}")


class Block(nn.Module):
    """One block of any kind, shortcut and activation order.

    `stride_on_first` puts the stride on the first conv (the seed tutorial's 1x1); otherwise a
    bottleneck strides in its 3x3 conv, as in torchvision's ResNet v1.5 and fb.resnet.torch.
    """

    def __init__(self, kind: str, in_ch: int, out_ch: int, *, stride: int = 1, shortcut: str = "A",
                 preact: bool = False, stride_on_first: bool = False) -> None:
        super().__init__()
        if kind == "basic":
            layout = [(in_ch, out_ch, 3, stride), (out_ch, out_ch, 3, 1)]
        elif kind == "bottleneck":
            mid = out_ch // EXPANSION[kind]
            s1, s2 = (stride, 1) if stride_on_first else (1, stride)
            layout = [(in_ch, mid, 1, s1), (mid, mid, 3, s2), (mid, out_ch, 1, 1)]
        else:
            raise ValueError(f"block must be basic or bottleneck, got {kind!r}")
        self.kind, self.preact, self.num_convs = kind, preact, len(layout)
        for i, (ci, co, k, s) in enumerate(layout, start=1):
            setattr(self, f"conv{i}", conv(ci, co, k, s))
            # Post-activation normalises each conv's output, pre-activation each conv's input.
            setattr(self, f"bn{i}", nn.BatchNorm2d(ci if preact else co))
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(shortcut, in_ch, out_ch, stride, preact)

    @property
    def is_residual(self) -> bool:
        return self.shortcut is not None

    def _layers(self):
        return [(getattr(self, f"conv{i}"), getattr(self, f"bn{i}")) for i in range(1, self.num_convs + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_pre(x) if self.preact else self._forward_post(x)

    def _forward_post(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        layers = self._layers()
        for i, (conv_i, bn_i) in enumerate(layers):
            out = bn_i(conv_i(out))
            if i < len(layers) - 1:
                out = self.relu(out)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)

    def _forward_pre(self, x: torch.Tensor) -> torch.Tensor:
        layers = self._layers()
        pre = self.relu(layers[0][1](x))
        out = layers[0][0](pre)
        for conv_i, bn_i in layers[1:]:
            out = conv_i(self.relu(bn_i(out)))
        if self.shortcut is not None:
            # A shape-changing shortcut shares the block's first BN-ReLU (He 2016b reference code);
            # the identity carries the raw signal, which is the point of pre-activation.
            out = out + self.shortcut(x if isinstance(self.shortcut, nn.Identity) else pre)
        return out

    def response_modules(self) -> list[nn.Module]:
        """Modules whose outputs are the 3x3 layers' responses of He 2016a Fig. 7.

        The paper's response is a 3x3 layer's output after BN, before the addition and the
        nonlinearity. Post-activation: the BN after each 3x3 conv. Pre-activation has no BN after
        a conv, so the conv output itself is the closest analogue.
        """
        return [conv_i if self.preact else bn_i
                for conv_i, bn_i in self._layers() if conv_i.kernel_size == (3, 3)]

    def zero_init_last(self) -> None:
        """Zero the last BN of the residual branch (pre-activation: its last conv), so the block
        starts as its shortcut. A plain block has no branch to silence and is left alone."""
        if not self.is_residual:
            return
        conv_n, bn_n = self._layers()[-1]
        nn.init.zeros_(conv_n.weight if self.preact else bn_n.weight)
