"""The architecture spec: the single source of truth every network is built from.

A name ("resnet56", "plain20", "preact-resnet164") resolves to an `ArchSpec`; overrides replace
fields; `ArchSpec.validate()` turns an impossible configuration into an error that says what is
valid. The network factory (models/network.py) reads nothing but this object, so a plain network
and its residual twin provably differ only in the `shortcut` field, and every variant of He 2016b
(Table 1 shortcuts, Fig. 4 activation orders, the 1-layer skip unit) is one field away.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Literal

from .fields import fields_of, meta, option


class ConfigError(ValueError):
    """A user-facing configuration error. Its message is one line that names the fix."""


Family = Literal["cifar", "imagenet", "seed"]
BlockKind = Literal["basic", "bottleneck", "single"]
# He 2016a Sec. 3.3 options, then the He 2016b Table 1 / Fig. 2 modified shortcuts.
ShortcutKind = Literal["none", "A", "B", "C", "scale", "gate", "shortcut-gate", "dropout"]
# He 2016b Fig. 4 (a)-(e): where BN and ReLU sit relative to the addition.
Order = Literal["post", "bn-after-add", "relu-before-add", "relu-preact", "preact"]
BLOCKS = typing.get_args(BlockKind)
SHORTCUTS = typing.get_args(ShortcutKind)
ORDERS = typing.get_args(Order)
PADS = ("append", "split")
FAMILIES = typing.get_args(Family)
DOWNSAMPLE = ("first", "last")
# The shortcuts that zero-pad where the shape changes (option A's `PadShortcut`); the Fig. 2
# modifications act on that identity, as on the option-A ResNet-110 of He 2016b Table 1.
PADDING_SHORTCUTS = ("A", "scale", "gate", "shortcut-gate", "dropout")
ORDER_NAMES = {"post": "post", "preact": "pre", "bn-after-add": "bnadd", "relu-before-add": "reluadd",
               "relu-preact": "relupre"}  # in variant names

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
BASE_WIDTH = {"cifar": 16, "imagenet": 64, "seed": 64}  # filters of the stem and the first stage
NUM_CLASSES = {"cifar": 10, "imagenet": 1000, "seed": 2}


@dataclass(frozen=True)
class ArchSpec:
    """Everything that defines a network, and nothing else.

    Each field says what it is in its declaration (`option(help=...)`, models/fields.py), which is
    also its command-line help. The shortcut fields (`group="shortcut"`) configure shortcut kinds:
    a residual kind that does not use one rejects a non-default value, a plain net ignores them
    all, so that a plain net and each residual variant differ in `shortcut` alone. The fields are
    declared in the order a variant's name lists them.
    """

    family: Family = option("cifar", "cifar (He 2016a Sec. 4.2: 3 stages of 16w/32w/64w filters on 32/16/8 maps), "
                            "imagenet (Table 1: 7x7/2 stem, 4 stages) or seed (the tutorial's bottleneck net)",
                            tag="always", name="{}")
    depth: int | None = option(20, "weighted layers; cifar: 6n+2 (basic), 9n+2 (bottleneck), 3n+2 (single); "
                               "imagenet: 18, 34, 50, 101, 152", tag="always", name="d{}", low=1, high=2000)
    block: BlockKind = option("basic", "basic (3x3, 3x3), bottleneck (1x1, 3x3, 1x1, expansion 4) or single "
                              "(one 3x3: He 2016b Table 3's 1-layer skip)", tag="always", name="{}")
    shortcut: ShortcutKind = option("A", "none (plain), He 2016a's A (zero-pad identity), B (projection where "
                                    "the shape changes), C (projection everywhere: He 2016b's 1x1 conv shortcut); "
                                    "He 2016b Table 1's scale, gate, shortcut-gate, dropout", tag="always", name="{}")
    preact: bool | None = option(None, "full pre-activation (He 2016b); the alias of --order preact "
                                 "(false: post); give either, or both agreeing", tag="always", name=False)
    order: Order | None = option(None, "He 2016b Fig. 4: post (a, original), bn-after-add (b), relu-before-add (c), "
                                 "relu-preact (d, ReLU-only pre-activation), preact (e, full pre-activation)",
                                 tag="always", name=lambda v: ORDER_NAMES[v])
    width: float = option(1, "multiplier on the family's base width (cifar 16, imagenet and seed 64)",
                          tag="always", name="w{}", high=64)
    pad: Literal["append", "split"] = option("append", "option A's zero channels: appended after the input's "
                                             "(fb.resnet.torch) or split before and after (akamaster's, whose "
                                             "checkpoints then load)", group="shortcut", kinds=PADDING_SHORTCUTS)
    shortcut_scale: float = option(0.5, "shortcut=scale: the shortcut's factor (paper: 0.5; 0 is the plain net)",
                                   tag="used", group="shortcut", kinds=("scale",), low=0, high=100)
    branch_scale: float = option(0.5, "shortcut=scale: the residual branch's factor (paper: 0.5; 0.5 and 1 "
                                 "fails to converge)", tag="used", group="shortcut", kinds=("scale",), low=0, high=100)
    gate_bias: float = option(-6.0, "shortcut=gate|shortcut-gate: the initial b_g of the gates "
                              "sigmoid(conv1x1(x) + b_g) (paper: -6)", tag="used", group="shortcut",
                              kinds=("gate", "shortcut-gate"), low=-100, high=100)
    shortcut_dropout: float = option(0.5, "shortcut=dropout: the drop probability (paper: 0.5)", tag="used",
                                     group="shortcut", kinds=("dropout",), low=0, below=1)
    bn_batch: int | None = option(None, "ghost BN: training-mode statistics over sub-batches of N images (the "
                                  "papers' 64 per GPU, on one GPU); default: the whole batch", name="bn{}",
                                  label=False, low=1)
    stages: tuple[int, ...] | None = option(None, "blocks per stage (comma-separated); derived from depth "
                                            "unless given", name=lambda v: "s" + "x".join(map(str, v)))
    bottleneck_stride: Literal["1x1", "3x3"] = option(
        "1x1", "where a strided bottleneck strides: 1x1 (its first 1x1 conv: He 2016a's Caffe ImageNet nets, "
        "KaimingHe/resnet-1k-layers; the papers) or 3x3 (torchvision's v1.5 and fb.resnet.torch; the registered "
        "resnet50/101/152, whose torchvision weights load)", name="stride{}", blocks=("bottleneck",))
    downsample: Literal["first", "last"] = option("first", "which block of a stage strides: first (the papers) "
                                                  "or last (the seed tutorial's layout)", name="down{}")
    zero_init_last: bool = option(False, "zero the last BN of each residual branch (Goyal et al. 2017; off in "
                                  "the papers)", name=lambda v: "zinit")

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

    def shortcut_config(self) -> ShortcutConfig:
        """The kind and every shortcut field: what each block's shortcut is built from."""
        options = tuple((f.name, getattr(self, f.name)) for f in fields_of(self, "shortcut"))
        return ShortcutConfig(self.shortcut, options)

    def as_dict(self) -> dict:
        """Flat, JSON-able view with the derived depth and stages filled in (for logging)."""
        d = dataclasses.asdict(self)
        d["depth"] = self.total_depth
        d["stages"] = list(self.stage_depths)
        return d

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> "ArchSpec":
        if self.shortcut not in SHORTCUTS:
            # The He 2016a options first: they are what most users mean.
            raise ConfigError(f"shortcut must be one of none, A, B, C, got {self.shortcut!r}; "
                              f"He 2016b Table 1 adds {', '.join(SHORTCUTS[4:])}")
        if not isinstance(self.preact, bool):
            raise ConfigError(f"preact must be true or false, got {self.preact!r}")
        if self.bn_batch is not None and (isinstance(self.bn_batch, bool) or not isinstance(self.bn_batch, int)
                                          or self.bn_batch < 1):
            raise ConfigError(f"bn_batch must be a positive integer or null, got {self.bn_batch!r}")
        check_declared(self)
        if self.shortcut != "none":
            for f in fields_of(self, "shortcut"):
                kinds, default = meta(f, "kinds") or (), f.default
                if self.shortcut not in kinds and getattr(self, f.name) != default:
                    raise ConfigError(f"{f.name} applies to shortcut {', '.join(kinds)}, "
                                      f"not to shortcut={self.shortcut!r}; leave it at {default!r}")
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


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ArchSpec)}


@dataclass(frozen=True)
class ShortcutConfig:
    """What a block builds its shortcut from: the kind and every `group="shortcut"` field of the
    spec (read as attributes: `cfg.pad`, `cfg.gate_bias`), so a new shortcut field reaches the
    blocks without another edit."""

    kind: str = "A"
    options: tuple[tuple[str, typing.Any], ...] = ()

    @classmethod
    def of(cls, kind: str = "A", spec_class: type | None = None, **options) -> "ShortcutConfig":
        """The config of `kind` with `options` over the spec class's defaults."""
        defaults = {f.name: f.default for f in fields_of(spec_class or ArchSpec, "shortcut")}
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise ValueError(f"unknown shortcut option(s) {', '.join(unknown)}; known: {', '.join(defaults)}")
        return cls(kind, tuple(sorted({**defaults, **options}.items())))

    def __getattr__(self, name: str):
        for key, value in object.__getattribute__(self, "options"):
            if key == name:
                return value
        raise AttributeError(f"shortcut config has no option {name!r}")


def check_declared(obj) -> None:
    """What a field's declaration says of its value: one of a Literal's choices, a number for a
    numeric field, within its declared bounds (models/fields.py `option`)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and type(None) in typing.get_args(hint):
            continue
        literal = hint if typing.get_origin(hint) is Literal else next(
            (a for a in args if typing.get_origin(a) is Literal), None)
        if literal is not None:
            if value not in typing.get_args(literal):
                raise ConfigError(f"{f.name} must be one of {', '.join(map(str, typing.get_args(literal)))}, "
                                  f"got {value!r}")
            continue
        if hint is float or float in args or any(meta(f, k) is not None for k in ("low", "below", "high")):
            _number(f.name, value, meta(f, "low"), meta(f, "below"), meta(f, "high"))


def shown_number(value) -> str:
    """A rejected value as an error quotes it: never thousands of digits."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(field: str, value, low: float | None = None, below: float | None = None,
            high: float | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (low is None or value >= low) and (below is None or value < below) and (high is None or value <= high)
    if not ok:
        if low is not None and below is not None:
            bounds = f" in [{low}, {below})"
        elif low is not None and high is not None:
            bounds = f" in [{low}, {high}]"
        else:
            bounds = "".join(f" {op} {b}" for op, b in ((">=", low), ("<", below), ("<=", high)) if b is not None)
        # An upper bound is the largest a study of the papers needs, not a law: say where it lives.
        raise_it = ("; the bound is the field's declaration (option(high=...) in models/spec.py or "
                    "runners/train/config.py): raise it there for more") if high is not None and ok is False \
            and isinstance(value, (int, float)) and not isinstance(value, bool) and value > high else ""
        raise ConfigError(f"{field} must be a {'finite ' if low is None and below is None and high is None else ''}"
                          f"number{bounds}, got {shown_number(value)}{raise_it}")


def _nearest(depth: int, per: int) -> tuple[int, ...]:
    """The valid depths (per*n + 2, n >= 1) just below and above `depth`."""
    n = max(1, (depth - 2) // per)
    below, above = per * n + 2, per * (n + 1) + 2
    return (below, above) if below < depth else (above,)
