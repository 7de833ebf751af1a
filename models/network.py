"""`ResNet(spec)`: stem, stages of `Block`s, head; the only network class of the project.

Every family is this class. The family chooses the stem (cifar: 3x3 conv; imagenet and seed:
7x7/2 conv and 3x3/2 max pool) and the base width; `make_stages` owns the stage loop, the widths,
the strides and the shortcut choice.
"""
from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

from .blocks import EXPANSION, Block, conv
from .spec import ArchSpec

BASE_WIDTH = {"cifar": 16, "imagenet": 64, "seed": 64}


class Stem(nn.Sequential):
    """cifar: 3x3 conv (He 2016a Sec. 4.2); imagenet/seed: 7x7/2 conv + 3x3/2 max pool (Table 1).

    A pre-activation cifar stem is the bare conv: the first block's BN-ReLU follows it
    (He 2016b reference code); the ImageNet stem keeps its BN-ReLU before the pool.
    """

    def __init__(self, family: str, out_ch: int, preact: bool) -> None:
        large = family != "cifar"
        layers: OrderedDict[str, nn.Module] = OrderedDict(conv=conv(3, out_ch, 7 if large else 3, 2 if large else 1))
        if large or not preact:
            layers["bn"] = nn.BatchNorm2d(out_ch)
            layers["relu"] = nn.ReLU(inplace=True)
        if large:
            layers["maxpool"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        super().__init__(layers)


class Head(nn.Sequential):
    """Global average pooling and a linear classifier; pre-activation nets add the final BN-ReLU."""

    def __init__(self, in_ch: int, num_classes: int, preact: bool) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if preact:
            layers["bn"] = nn.BatchNorm2d(in_ch)
            layers["relu"] = nn.ReLU(inplace=True)
        layers["pool"] = GlobalAvgPool()
        layers["fc"] = nn.Linear(in_ch, num_classes)
        super().__init__(layers)


class GlobalAvgPool(nn.Module):
    """(N, C, H, W) -> (N, C) at any input size and batch size.

    A mean rather than `AdaptiveAvgPool2d`, whose CUDA backward has no deterministic kernel:
    this keeps deterministic mode (and exact resume) available on GPUs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def make_stages(spec: ArchSpec, in_ch: int) -> tuple[nn.Sequential, int]:
    """Build the stages of `spec` on top of a stem with `in_ch` channels.

    Stage i has blocks of output width base * 2**i * expansion. Every stage but the first halves
    the resolution: at its first block (the papers), or, in the seed layout (downsample="last"),
    every stage but the last halves it at its last block.
    """
    base = round(BASE_WIDTH[spec.family] * spec.width)
    expansion = EXPANSION[spec.block]
    depths = spec.stage_depths
    stages = []
    for i, n in enumerate(depths):
        out_ch = base * 2**i * expansion
        if spec.downsample == "first":
            strides = [2 if i > 0 else 1] + [1] * (n - 1)
        else:
            strides = [1] * (n - 1) + [2 if i < len(depths) - 1 else 1]
        blocks = []
        for stride in strides:
            blocks.append(Block(spec.block, in_ch, out_ch, stride=stride, shortcut=spec.shortcut,
                                preact=spec.preact, stride_on_first=spec.downsample == "last"))
            in_ch = out_ch
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages), in_ch


class ResNet(nn.Module):
    """A plain or residual network of any family, built from an `ArchSpec` and nothing else."""

    def __init__(self, spec: ArchSpec, num_classes: int | None = None) -> None:
        super().__init__()
        spec.validate()
        self.spec = spec
        self.num_classes = num_classes or spec.default_num_classes
        stem_ch = round(BASE_WIDTH[spec.family] * spec.width)
        self.stem = Stem(spec.family, stem_ch, spec.preact)
        self.stages, out_ch = make_stages(spec, stem_ch)
        self.head = Head(out_ch, self.num_classes, spec.preact)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation (He et al. 2015, as the paper does), BN at identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.spec.zero_init_last:
            for block in self.blocks():
                block.zero_init_last()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, 3, H, W) -> (N, C, H/s, W/s) -> (N, num_classes)
        return self.head(self.stages(self.stem(x)))

    def blocks(self) -> list[Block]:
        return [m for m in self.modules() if isinstance(m, Block)]

    def response_modules(self) -> list[tuple[str, nn.Module]]:
        """The 3x3 layers' response points (He 2016a Fig. 7), in depth order, with their names."""
        names = {m: n for n, m in self.named_modules()}
        out = []
        if self.stem.conv.kernel_size == (3, 3):
            point = self.stem.bn if hasattr(self.stem, "bn") else self.stem.conv
            out.append((names[point], point))
        for block in self.blocks():
            out.extend((names[m], m) for m in block.response_modules())
        return out

    def complexity(self, input_size: int | None = None):
        from .complexity import complexity
        return complexity(self, input_size)


# torchvision's ResNet module names -> ours. Only the containers differ; block internals match.
_TORCHVISION_RENAMES = [
    (r"^conv1\.", "stem.conv."),
    (r"^bn1\.", "stem.bn."),
    (r"^layer(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
    (r"\.downsample\.0\.", ".shortcut.conv."),
    (r"\.downsample\.1\.", ".shortcut.bn."),
    (r"^fc\.", "head.fc."),
]


def from_torchvision_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ResNet state_dict so it loads into ours with strict=True.

    layer{i}.{j}.* -> stages.{i-1}.{j}.*, downsample.{0,1} -> shortcut.{conv,bn}, conv1/bn1 ->
    stem.conv/stem.bn, fc -> head.fc.
    """
    renamed = {}
    for key, value in state_dict.items():
        for pattern, repl in _TORCHVISION_RENAMES:
            key = re.sub(pattern, repl, key)
        renamed[key] = value
    return renamed
