"""The architecture spec: the single source of truth every network is built from.

A name ("resnet56", "plain20", "preact-resnet164") resolves to an `ArchSpec`; overrides replace
fields; `ArchSpec.validate()` turns an impossible configuration into an error that says what is
valid. The network factory (models/network.py) reads nothing but this object, so a plain network
and its residual twin provably differ only in the `shortcut` field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal


class ConfigError(ValueError):
    """A user-facing configuration error. Its message is one line that names the fix."""


Family = Literal["cifar", "imagenet", "seed"]
BLOCKS = ("basic", "bottleneck")
SHORTCUTS = ("none", "A", "B", "C")
FAMILIES = ("cifar", "imagenet", "seed")
DOWNSAMPLE = ("first", "last")

# He et al. 2016a, Table 1: stage counts of the ImageNet networks.
IMAGENET_DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
CONVS_PER_BLOCK = {"basic": 2, "bottleneck": 3}
INPUT_SIZE = {"cifar": 32, "imagenet": 224, "seed": 224}
NUM_CLASSES = {"cifar": 10, "imagenet": 1000, "seed": 2}


@dataclass(frozen=True)
class ArchSpec:
    """Everything that defines a network, and nothing else.

    family:    "cifar" (He 2016a Sec. 4.2: 3 stages on 32/16/8 maps, 16w/32w/64w filters),
               "imagenet" (Table 1: 7x7/2 stem, 4 stages) or "seed" (the tutorial's bottleneck net).
    depth:     weighted layers. cifar: 6n+2 (basic) or 9n+2 (bottleneck); imagenet: 18..152.
    stages:    blocks per stage; derived from depth unless given (imagenet/seed: any list).
    block:     "basic" (two 3x3) or "bottleneck" (1x1, 3x3, 1x1, expansion 4).
    shortcut:  "none" (plain), "A" (zero-pad identity), "B" (projection where the shape
               changes), "C" (projection everywhere).
    preact:    False = original post-activation; True = full pre-activation (He 2016b).
    width:     multiplier on the family's base width (cifar 16, imagenet and seed 64).
    downsample: which block of a stage strides: "first" (the papers) or "last" (the seed
               tutorial's layout, with the stride on the block's first 1x1 conv).
    zero_init_last: zero the last BN of each residual branch (Goyal et al. 2017); off in the paper.
    """

    family: Family = "cifar"
    depth: int | None = 20
    block: str = "basic"
    shortcut: str = "A"
    preact: bool = False
    width: float = 1
    stages: tuple[int, ...] | None = None
    downsample: str = "first"
    zero_init_last: bool = False

    def __post_init__(self) -> None:
        if self.stages is not None and not isinstance(self.stages, tuple):
            object.__setattr__(self, "stages", tuple(self.stages))

    # -- derived -----------------------------------------------------------------------------
    @property
    def stage_depths(self) -> tuple[int, ...]:
        """Blocks per stage, after validation."""
        if self.stages is not None:
            return self.stages
        if self.family == "cifar":
            n = (self.depth - 2) // (3 * CONVS_PER_BLOCK[self.block])
            return (n, n, n)
        return IMAGENET_DEPTHS[self.depth][1]

    @property
    def total_depth(self) -> int:
        return 2 + CONVS_PER_BLOCK[self.block] * sum(self.stage_depths)

    @property
    def input_size(self) -> int:
        return INPUT_SIZE[self.family]

    @property
    def default_num_classes(self) -> int:
        return NUM_CLASSES[self.family]

    def replace(self, **overrides) -> "ArchSpec":
        """A copy with fields replaced; unknown fields raise ConfigError listing the valid ones."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ConfigError(f"unknown architecture field(s) {', '.join(unknown)}; "
                              f"valid fields: {', '.join(names)}")
        changed = dict(overrides)
        # Giving a depth re-derives the stages, and giving stages re-derives the depth.
        if "depth" in changed and "stages" not in changed:
            changed["stages"] = None
        if "stages" in changed and changed["stages"] is not None and "depth" not in changed:
            changed["depth"] = None
        spec = dataclasses.replace(self, **changed)
        spec.validate()
        return spec

    def as_dict(self) -> dict:
        """Flat, JSON-able view with the derived depth and stages filled in (for logging)."""
        d = dataclasses.asdict(self)
        d["depth"] = self.total_depth
        d["stages"] = list(self.stage_depths)
        return d

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> "ArchSpec":
        _choice("family", self.family, FAMILIES)
        _choice("block", self.block, BLOCKS)
        _choice("shortcut", self.shortcut, SHORTCUTS)
        _choice("downsample", self.downsample, DOWNSAMPLE)
        if not isinstance(self.preact, bool):
            raise ConfigError(f"preact must be true or false, got {self.preact!r}")
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)) or self.width <= 0:
            raise ConfigError(f"width must be a positive number, got {self.width!r}")
        if self.stages is not None:
            if not self.stages or not all(isinstance(s, int) and s >= 1 for s in self.stages):
                raise ConfigError(f"stages must be a non-empty list of positive integers, got {list(self.stages)}")
            if self.family == "cifar" and len(self.stages) != 3:
                raise ConfigError(f"the cifar family has 3 stages, got stages={list(self.stages)}")
            if self.depth is not None and self.depth != self.total_depth:
                raise ConfigError(f"depth={self.depth} contradicts stages={list(self.stages)} "
                                  f"(which give depth {self.total_depth}); give one of them")
            return self
        if not isinstance(self.depth, int) or isinstance(self.depth, bool):
            raise ConfigError(f"depth must be an integer, got {self.depth!r}")
        if self.family == "cifar":
            per = 3 * CONVS_PER_BLOCK[self.block]
            if self.depth < per + 2 or (self.depth - 2) % per:
                rule = f"{per}n+2"
                raise ConfigError(f"depth must be {rule} for {self.block} blocks "
                                  f"(nearest: {', '.join(map(str, _nearest(self.depth, per)))}), got {self.depth}")
        elif self.family == "imagenet":
            if self.depth not in IMAGENET_DEPTHS:
                raise ConfigError(f"imagenet depth must be one of {', '.join(map(str, IMAGENET_DEPTHS))} "
                                  f"(or give stages=[...]), got {self.depth}")
            block = IMAGENET_DEPTHS[self.depth][0]
            if block != self.block:
                raise ConfigError(f"imagenet depth {self.depth} uses {block} blocks, got block={self.block}; "
                                  f"give stages=[...] for a custom {self.block} net")
        else:
            raise ConfigError("the seed family is defined by stages=[...], not by depth")
        return self


def _choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{field} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _nearest(depth: int, per: int) -> tuple[int, ...]:
    """The valid depths (per*n + 2, n >= 1) just below and above `depth`."""
    n = max(1, (depth - 2) // per)
    below, above = per * n + 2, per * (n + 1) + 2
    return (below, above) if below < depth else (above,)
