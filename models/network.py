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

from .blocks import EXPANSION, PRE_ORDERS, Block, conv, norm_layer
from .complexity import Complexity, complexity
from .spec import BASE_WIDTH, ArchSpec


class Stem(nn.Sequential):
    """cifar: 3x3 conv (He 2016a Sec. 4.2); imagenet/seed: 7x7/2 conv + 3x3/2 max pool (Table 1).

    Every activation order keeps the stem's BN-ReLU. In the pre-activation orders it is the first
    unit's pre-activation: He 2016b Sec. 4.1 adopts "the first activation right after conv1 and
    before splitting into two paths", so the first block adds none (fb.resnet.torch
    preresnet.lua: conv-BN-ReLU stem, then a 'no_preact' first block; its CIFAR variant's bare
    conv followed by a shared 'both_preact' BN-ReLU computes the same function).
    """

    def __init__(self, family: str, out_ch: int, norm=nn.BatchNorm2d) -> None:
        large = family != "cifar"
        layers: OrderedDict[str, nn.Module] = OrderedDict(conv=conv(3, out_ch, 7 if large else 3, 2 if large else 1))
        layers["bn"] = norm(out_ch)
        layers["relu"] = nn.ReLU(inplace=True)
        if large:
            layers["maxpool"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        super().__init__(layers)


class Head(nn.Sequential):
    """Global average pooling and a linear classifier.

    The pre-activation orders add "an extra activation right after [the last unit's] element-wise
    addition" (He 2016b Sec. 4.1): BN-ReLU for full pre-activation (e), ReLU for ReLU-only (d).
    """

    def __init__(self, in_ch: int, num_classes: int, order: str, norm=nn.BatchNorm2d) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if order == "preact":
            layers["bn"] = norm(in_ch)
        if order in PRE_ORDERS:
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
    norm = norm_layer(spec.bn_batch)
    shortcut = spec.shortcut_config()
    stages = []
    for i, n in enumerate(depths):
        out_ch = base * 2**i * expansion
        if spec.downsample == "first":
            strides = [2 if i > 0 else 1] + [1] * (n - 1)
        else:
            strides = [1] * (n - 1) + [2 if i < len(depths) - 1 else 1]
        blocks = []
        for j, stride in enumerate(strides):
            blocks.append(Block(spec.block, in_ch, out_ch, stride=stride, shortcut=shortcut, order=spec.order,
                                stride_on_first=spec.bottleneck_stride == "1x1", input_activated=i == 0 and j == 0,
                                norm=norm))
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
        norm = norm_layer(spec.bn_batch)
        self.stem = Stem(spec.family, stem_ch, norm)
        self.stages, out_ch = make_stages(spec, stem_ch)
        self.head = Head(out_ch, self.num_classes, spec.order, norm)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation (He et al. 2015, as the paper does), BN at identity, the classifier's
        bias at 0 (fb.resnet.torch and resnet-1k-layers zero it, Caffe's default filler is 0; its
        weight keeps torch's default, Torch7's uniform(+-1/sqrt(fan_in)) too)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
            if hasattr(m, "reset_gate"):  # a gate's bias starts at b_g (He 2016b Sec. 3.1)
                m.reset_gate()
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
            out.append((names[self.stem.bn], self.stem.bn))
        for block in self.blocks():
            out.extend((names[m], m) for m in block.response_modules())
        return out

    def complexity(self, input_size: int | None = None) -> Complexity:
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
    return _renamed(state_dict, _TORCHVISION_RENAMES)


def _renamed(state_dict: dict, renames: list) -> dict:
    """`state_dict` with every key passed through the (pattern, replacement) list in order."""
    renamed = {}
    for key, value in state_dict.items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        renamed[key] = value
    return renamed


# akamaster/pytorch_resnet_cifar10 module names -> ours. Its blocks match ours; option A has no
# parameters, so only the containers are renamed.
_AKAMASTER_RENAMES = [
    (r"^module\.", ""),  # saved from nn.DataParallel
    (r"^conv1\.", "stem.conv."),
    (r"^bn1\.", "stem.bn."),
    (r"^layer(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
    (r"^linear\.", "head.fc."),
]


def from_akamaster_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    """Rename an akamaster/pytorch_resnet_cifar10 ResNet state_dict (or its checkpoint, a dict
    holding "state_dict") so it loads with strict=True into our net built with pad="split":

        net = models.build("resnet56", pad="split")
        net.load_state_dict(models.from_akamaster_state_dict(torch.load(path)), strict=True)

    module.* -> *, conv1/bn1 -> stem.conv/stem.bn, layer{i}.{j}.* -> stages.{i-1}.{j}.*,
    linear -> head.fc. Its option A puts the zero channels on both sides (pad="split").
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    return _renamed(state_dict, _AKAMASTER_RENAMES)
