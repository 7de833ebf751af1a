"""The architecture spec: the single source of truth every network is built from.

A name ("resnet56", "plain20", "preact-resnet164") resolves to an `ArchSpec`; overrides replace
fields; `ArchSpec.validate()` turns an impossible configuration into an error that says what is
valid. The network factory (models/network.py) reads nothing but this object, so a plain network
and its residual twin provably differ only in the `shortcut` field, and every variant of He 2016b
(Table 1 shortcuts, Fig. 4 activation orders, the 1-layer skip unit) is one field away.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal


class ConfigError(ValueError):
    """A user-facing configuration error. Its message is one line that names the fix."""


Family = Literal["cifar", "imagenet", "seed"]
BLOCKS = ("basic", "bottleneck", "single")
# He 2016a Sec. 3.3 options, then the He 2016b Table 1 / Fig. 2 modified shortcuts.
SHORTCUTS = ("none", "A", "B", "C", "scale", "gate", "shortcut-gate", "dropout")
# The shortcuts that zero-pad where the shape changes (option A's `PadShortcut`); the Fig. 2
# modifications act on that identity, as on the option-A ResNet-110 of He 2016b Table 1.
PADDING_SHORTCUTS = ("A", "scale", "gate", "shortcut-gate", "dropout")
# He 2016b Fig. 4 (a)-(e): where BN and ReLU sit relative to the addition.
ORDERS = ("post", "bn-after-add", "relu-before-add", "relu-preact", "preact")
PADS = ("append", "split")
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
CONVS_PER_BLOCK = {"basic": 2, "bottleneck": 3, "single": 1}
INPUT_SIZE = {"cifar": 32, "imagenet": 224, "seed": 224}
NUM_CLASSES = {"cifar": 10, "imagenet": 1000, "seed": 2}


@dataclass(frozen=True)
class ArchSpec:
    """Everything that defines a network, and nothing else.

    family:    "cifar" (He 2016a Sec. 4.2: 3 stages on 32/16/8 maps, 16w/32w/64w filters),
               "imagenet" (Table 1: 7x7/2 stem, 4 stages) or "seed" (the tutorial's bottleneck net).
    depth:     weighted layers. cifar: 6n+2 (basic) or 9n+2 (bottleneck); imagenet: 18..152.
    stages:    blocks per stage; derived from depth unless given (imagenet/seed: any list).
    block:     "basic" (two 3x3), "bottleneck" (1x1, 3x3, 1x1, expansion 4) or "single" (one
               3x3: the "1-layer skip" unit of He 2016b Table 3; cifar depth 3n+2).
    shortcut:  "none" (plain), "A" (zero-pad identity), "B" (projection where the shape
               changes), "C" (projection everywhere: He 2016b Fig. 2e's "1x1 conv shortcut",
               which the paper itself names option C), and He 2016b Table 1's modifications of
               the identity (zero-padded where the shape changes, as A):
               "scale" (Fig. 2b) shortcut_scale * h(x) + branch_scale * F(x);
               "gate" (Fig. 2c, exclusive gating) (1 - g(x)) * h(x) + g(x) * F(x);
               "shortcut-gate" (Fig. 2d) (1 - g(x)) * h(x) + F(x);
               "dropout" (Fig. 2f) dropout(h(x)) + F(x).
    order:     He 2016b Fig. 4: "post" (a, original), "bn-after-add" (b), "relu-before-add" (c),
               "relu-preact" (d, ReLU-only pre-activation), "preact" (e, full pre-activation).
    preact:    alias kept from before `order`: True means order="preact", False order="post".
               Give either; given both, they must agree (preact=True with order="preact").
    width:     multiplier on the family's base width (cifar 16, imagenet and seed 64).
    downsample: which block of a stage strides: "first" (the papers) or "last" (the seed
               tutorial's layout, with the stride on the block's first 1x1 conv).
    zero_init_last: zero the last BN of each residual branch (Goyal et al. 2017); off in the paper.
    pad:       where option A puts its zero channels: "append" after the input's (fb.resnet.torch,
               the reference of both papers) or "split" half before, half after (akamaster's
               pytorch_resnet_cifar10, whose checkpoints then load: `from_akamaster_state_dict`).
    shortcut_scale, branch_scale: the constants of shortcut="scale" (paper: 0.5 and 0.5, 12.35%;
               0.5 and 1 fails to converge; shortcut_scale=0 is the plain net).
    gate_bias: the initial b_g of the gates g(x) = sigmoid(conv1x1(x) + b_g) (paper: -6).
    shortcut_dropout: the drop probability of shortcut="dropout" (paper: 0.5).
    bn_batch:  ghost batch norm: training-mode BN statistics over sub-batches of this many images
               (None: the whole batch), so one GPU can match the papers' BN over each GPU's share.

    The shortcut_* / branch_* / gate_* / pad fields configure shortcuts: a residual kind that does
    not use one rejects a non-default value, a plain net ignores them all, so that a plain net
    and each residual variant differ in `shortcut` alone.
    """

    family: Family = "cifar"
    depth: int | None = 20
    block: str = "basic"
    shortcut: str = "A"
    preact: bool | None = None
    width: float = 1
    stages: tuple[int, ...] | None = None
    downsample: str = "first"
    zero_init_last: bool = False
    order: str | None = None
    pad: str = "append"
    shortcut_scale: float = 0.5
    branch_scale: float = 0.5
    gate_bias: float = -6.0
    shortcut_dropout: float = 0.5
    bn_batch: int | None = None

    def __post_init__(self) -> None:
        if self.stages is not None and not isinstance(self.stages, tuple):
            object.__setattr__(self, "stages", tuple(self.stages))
        # `preact` and `order` are one axis: fill in whichever was not given.
        if self.order is None:
            object.__setattr__(self, "order", "preact" if self.preact else "post")
        elif self.preact is None:
            object.__setattr__(self, "preact", self.order == "preact")
        elif isinstance(self.preact, bool) and self.preact != (self.order == "preact"):
            raise ConfigError(f"preact={str(self.preact).lower()} contradicts order={self.order!r} "
                              f"(preact=true is order='preact', false is 'post'); give one of them")
        if self.preact is None:
            object.__setattr__(self, "preact", False)

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
        # Likewise `preact` re-derives `order` and `order` re-derives `preact`.
        if ("preact" in changed) != ("order" in changed):
            changed.setdefault("preact", None)
            changed.setdefault("order", None)
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
        if self.shortcut not in SHORTCUTS:
            # The He 2016a options first: they are what most users mean.
            raise ConfigError(f"shortcut must be one of none, A, B, C, got {self.shortcut!r}; "
                              f"He 2016b Table 1 adds {', '.join(SHORTCUTS[4:])}")
        _choice("downsample", self.downsample, DOWNSAMPLE)
        _choice("order", self.order, ORDERS)
        _choice("pad", self.pad, PADS)
        if not isinstance(self.preact, bool):
            raise ConfigError(f"preact must be true or false, got {self.preact!r}")
        _number("shortcut_scale", self.shortcut_scale, low=0)
        _number("branch_scale", self.branch_scale, low=0)
        _number("gate_bias", self.gate_bias)
        _number("shortcut_dropout", self.shortcut_dropout, low=0, below=1)
        if self.bn_batch is not None and (isinstance(self.bn_batch, bool) or not isinstance(self.bn_batch, int)
                                          or self.bn_batch < 1):
            raise ConfigError(f"bn_batch must be a positive integer or null, got {self.bn_batch!r}")
        if self.shortcut != "none":
            for name, kinds in SHORTCUT_FIELDS.items():
                if self.shortcut not in kinds and getattr(self, name) != _DEFAULTS[name]:
                    raise ConfigError(f"{name} applies to shortcut {', '.join(kinds)}, "
                                      f"not to shortcut={self.shortcut!r}; leave it at {_DEFAULTS[name]!r}")
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


# The fields that configure only some shortcut kinds, and those kinds.
SHORTCUT_FIELDS = {"pad": PADDING_SHORTCUTS, "shortcut_scale": ("scale",), "branch_scale": ("scale",),
                   "gate_bias": ("gate", "shortcut-gate"), "shortcut_dropout": ("dropout",)}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ArchSpec)}


def _number(field: str, value, low: float | None = None, below: float | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and (low is None or value >= low) and (below is None or value < below)
    if not ok:
        bounds = " in [{}, {})".format(low, below) if below is not None else (f" >= {low}" if low is not None else "")
        raise ConfigError(f"{field} must be a number{bounds}, got {value!r}")


def _choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{field} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _nearest(depth: int, per: int) -> tuple[int, ...]:
    """The valid depths (per*n + 2, n >= 1) just below and above `depth`."""
    n = max(1, (depth - 2) // per)
    below, above = per * n + 2, per * (n + 1) + 2
    return (below, above) if below < depth else (above,)
