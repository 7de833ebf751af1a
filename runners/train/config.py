"""Typed, frozen configuration of the data and the training recipe.

The defaults are the paper's CIFAR recipe (He et al. 2016a, Sec. 4.2): SGD with momentum 0.9,
weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 32k and 48k iterations, stop at 64k, on a
45k/5k train/val split, per-pixel mean subtraction, 4-pixel padding, random 32x32 crops and
horizontal flips. `from_mapping` loads them from YAML/CLI dictionaries and rejects unknown keys
and wrong types with a message naming the field.

A recipe preset (`TrainConfig.recipe`, see RECIPES) is a named bundle of train and data values
laid under what the user gives: `apply_recipe` resolves "auto" by the model family (imagenet ->
he2016a-imagenet, else he2016a-cifar) and the resolved name is a field, so it is logged with the
run. Explicit values always win over the preset's.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError, reject_unknown, shown


BUILTIN_DATASETS = ("cifar10", "cifar100", "synthetic")  # anything else is an ImageFolder path

# He 2016a Sec. 3.4: "The image is resized with its shorter side randomly sampled in [256, 480]
# for scale augmentation. A 224x224 crop is randomly sampled from an image or its horizontal
# flip, with the per-pixel mean subtracted. The standard color augmentation in [21] is used. ...
# SGD with a mini-batch size of 256. The learning rate starts from 0.1 and is divided by 10 when
# the error plateaus, and the models are trained for up to 60 x 10^4 iterations. ... weight decay
# of 0.0001 and a momentum of 0.9. We do not use dropout." The plateau rule is given here in its
# common fixed form, /10 at epochs 30 and 60 of 90 (fb.resnet.torch, torchvision's references);
# `train.schedule: plateau` is the rule as stated (runners/train/schedule.py LRSchedule).
# [21] is AlexNet's PCA lighting. fb.resnet.torch adds ColorJitter(0.4, 0.4, 0.4), which the paper
# does not name: `dataset.color_jitter: 0.4` turns it on (off in the preset).
RECIPES: dict[str, dict[str, dict]] = {
    "he2016a-cifar": {"train": {}, "data": {}},  # the dataclass defaults (Sec. 4.2)
    "he2016a-imagenet": {
        "train": {"epochs": 90, "batch_size": 256, "lr": 0.1, "milestones": [30, 60], "momentum": 0.9,
                  "weight_decay": 1e-4, "eval_batch_size": 100},
        "data": {"val_size": 10_000, "scale": [256, 480], "crop": 224, "resize": 256,
                 "crop_mode": "scale", "lighting": 0.1, "normalize": "pixel_mean"},
    },
    # torchvision's reference recipe (what most later papers report with): RandomResizedCrop
    # (area 8-100%, aspect 3/4-4/3) and flip, per-channel standardisation, no lighting.
    "torchvision-imagenet": {
        "train": {"epochs": 90, "batch_size": 256, "lr": 0.1, "milestones": [30, 60], "momentum": 0.9,
                  "weight_decay": 1e-4, "eval_batch_size": 100},
        "data": {"val_size": 10_000, "crop": 224, "resize": 256, "crop_mode": "random_resized",
                 "lighting": 0.0, "normalize": "channel"},
    },
}


@dataclass(frozen=True)
class DataConfig:
    """name: cifar10 | cifar100 | synthetic | a path to an ImageFolder root with train/ and test/."""

    name: str = "cifar10"
    root: str = "data"  # where torchvision downloads CIFAR (ignored for an ImageFolder path)
    val_size: int = 5000  # held out from the training set: the paper's 45k/5k
    subset: int | None = None  # use only this many training images (before the val split)
    normalize: Literal["pixel_mean", "channel"] = "pixel_mean"  # the paper subtracts the per-pixel mean
    augment: bool = True  # pad 4, random 32x32 crop, horizontal flip
    split_seed: int = 0  # the val split and subset are fixed by this, not by the training seed
    # memory: decode everything once into one uint8 tensor on the device (CIFAR-sized data).
    # stream: decode per batch in DataLoader workers (ImageNet-sized data, or images of many sizes).
    # auto: stream when the folder would not fit (runners/train/stream.py) or a field below asks
    # for per-image resizing; memory otherwise.
    loader: Literal["auto", "memory", "stream"] = "auto"
    # The streamed path's geometry (ImageNet, He 2016a Sec. 3.4); None: images as they are.
    crop: int | None = None  # training and evaluation crop side (224)
    scale: tuple[int, ...] | None = None  # crop_mode scale: shorter side uniform in [lo, hi] (256, 480)
    resize: int | None = None  # evaluation: shorter side resized to this, then a center crop (256)
    crop_mode: Literal["scale", "random_resized"] = "scale"  # random_resized: torchvision's recipe
    lighting: float = 0.0  # std of AlexNet's PCA lighting noise (fb.resnet.torch: 0.1)
    # fb.resnet.torch's ColorJitter: brightness, contrast and saturation, each scaled by a factor
    # uniform in [1 - v, 1 + v], in a random order per image (fb.resnet.torch: 0.4)
    color_jitter: float = 0.0
    ten_crop: bool = False  # evaluate on the 4 corners + center and their flips, averaging softmax
    stats_images: int = 10_000  # training images the normalisation statistics are taken from

    def __post_init__(self) -> None:
        if self.scale is not None and not isinstance(self.scale, tuple):
            object.__setattr__(self, "scale", tuple(self.scale))

    @property
    def resizes(self) -> bool:
        """Whether images are resized or cropped per image (only the streamed path does that)."""
        return self.crop is not None or self.scale is not None or self.resize is not None or self.ten_crop

    @property
    def streamed_only(self) -> list[str]:
        """The fields set here that only the streamed path implements (per-image geometry, colour)."""
        return [f for f in ("crop", "scale", "resize", "ten_crop", "lighting", "color_jitter") if getattr(self, f)]

    def validate(self) -> "DataConfig":
        if self.val_size < 0:
            raise ConfigError(f"dataset.val_size must be >= 0, got {self.val_size}")
        if self.subset is not None and self.subset < 1:
            raise ConfigError(f"dataset.subset must be positive, got {self.subset}")
        if self.subset is not None and self.subset <= self.val_size:
            raise ConfigError(f"dataset.subset ({self.subset}) must exceed dataset.val_size ({self.val_size}): "
                              "the validation split is carved from the subset")
        _check_literal(self, "normalize")
        _check_literal(self, "loader")
        _check_literal(self, "crop_mode")
        if self.streamed_only and (self.loader == "memory" or self.name in BUILTIN_DATASETS):
            # The in-memory path would train without them, silently: refused instead.
            raise ConfigError(f"dataset.{'/'.join(self.streamed_only)}: per-image resizing and colour augmentation "
                              f"are done by the streamed loader only, for an image folder; "
                              + ("use dataset.loader stream (or auto), not memory" if self.loader == "memory" else
                                 f"{self.name} is held in memory: unset them (the ImageNet recipes set them; "
                                 "train.recipe he2016a-cifar does not)"))
        if self.scale is not None and (len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]):
            raise ConfigError(f"dataset.scale must be [low, high] with 0 < low <= high, got {list(self.scale)}")
        if self.crop is not None and self.crop <= 0:
            raise ConfigError(f"dataset.crop must be positive, got {self.crop}")
        sides = [v for v in (self.resize, *(self.scale or ())) if v]
        if self.crop is not None and sides and min(sides) < self.crop:
            raise ConfigError(f"dataset.crop ({self.crop}) must not exceed dataset.resize or dataset.scale's low end")
        if self.ten_crop and self.crop is None:
            raise ConfigError("dataset.ten_crop needs dataset.crop (the side of the ten crops)")
        if self.lighting < 0 or self.stats_images <= 0:
            raise ConfigError("dataset.lighting must be >= 0 and dataset.stats_images positive")
        if not 0 <= self.color_jitter < 1:
            raise ConfigError(f"dataset.color_jitter must be in [0, 1), got {self.color_jitter}")
        return self


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. Give `epochs` or `iterations` (default: the paper's 64k iterations).

    milestones are in the unit of the run's length; None means the paper's 1/2 and 3/4 of it
    (32k and 48k of 64k iterations).
    """

    epochs: int | None = None
    iterations: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    schedule: Literal["step", "cosine", "constant", "plateau"] = "step"
    milestones: tuple[float, ...] | None = None
    gamma: float = 0.1
    # schedule=plateau, He 2016a Sec. 3.4 ("divided by 10 when the error plateaus"): lr x gamma
    # after `plateau_patience` epochs whose validation error (training error without a
    # validation split) improved on the best by less than `plateau_threshold`.
    plateau_patience: int = 5
    plateau_threshold: float = 0.001
    # He 2016a Sec. 4.2, ResNet-110: lr 0.01 until the training error is below 80%, then back.
    warmup: bool = False
    warmup_lr: float = 0.01
    warmup_until_error: float = 0.8
    # He 2016b Appendix: "warm up ... at the beginning 400 iterations" -- a fixed length instead.
    warmup_iterations: int | None = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 where CUDA supports it; off on CPU
    channels_last: bool = True  # the layout of tensor-core convolutions; faster on CPU too (README)
    compile: bool = False
    # torch.compile's mode; reduce-overhead replays CUDA graphs (`ablate doctor` measures both).
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    eval_batch_size: int | None = None  # None: 1000 on CUDA, 250 on CPU (README: Performance)
    probe: bool = True  # layer-response std (Fig. 7) after training
    threads: int | None = None  # CPU threads for this process; None: all cores (split among local ranks)
    # The named preset laid under the explicit values (RECIPES); auto: by the model family.
    recipe: Literal["auto", "he2016a-cifar", "he2016a-imagenet", "torchvision-imagenet"] = "auto"
    sync_bn: bool = False  # distributed: BN statistics over the global batch instead of each rank's
    workers: int | None = None  # streamed data: decoding processes per rank; None: cores per rank, at most 8

    def __post_init__(self) -> None:
        if self.milestones is not None and not isinstance(self.milestones, tuple):
            object.__setattr__(self, "milestones", tuple(self.milestones))

    @property
    def length(self) -> tuple[int, str]:
        """(how many, unit): the run length in epochs or iterations."""
        if self.epochs is not None:
            return self.epochs, "epochs"
        return (self.iterations if self.iterations is not None else 64_000), "iterations"

    def validate(self) -> "TrainConfig":
        if self.epochs is not None and self.iterations is not None:
            raise ConfigError("give train.epochs or train.iterations, not both")
        n, unit = self.length
        if n <= 0:
            raise ConfigError(f"train.{unit} must be positive, got {n}")
        for f in ("batch_size", "eval_batch_size"):
            if getattr(self, f) is not None and getattr(self, f) <= 0:
                raise ConfigError(f"train.{f} must be positive, got {getattr(self, f)}")
        # Ranges a trial would otherwise only fail on mid-study (or silently misbehave with).
        for f in ("lr", "momentum", "weight_decay", "gamma", "warmup_lr", "warmup_until_error"):
            if not math.isfinite(getattr(self, f)):
                raise ConfigError(f"train.{f} must be a finite number, got {getattr(self, f)}")
        for f in ("lr", "gamma", "warmup_lr"):
            if getattr(self, f) <= 0:
                raise ConfigError(f"train.{f} must be positive, got {getattr(self, f)}")
        for f in ("momentum", "weight_decay"):
            if getattr(self, f) < 0:
                raise ConfigError(f"train.{f} must be >= 0, got {getattr(self, f)}")
        if self.nesterov and self.momentum <= 0:
            raise ConfigError("train.nesterov needs train.momentum > 0")
        if self.plateau_patience < 1 or not 0 <= self.plateau_threshold < 1:
            raise ConfigError(f"train.plateau_patience must be at least 1 and train.plateau_threshold in [0, 1), "
                              f"got {self.plateau_patience} and {self.plateau_threshold}")
        if self.warmup_iterations is not None and self.warmup_iterations < 1:
            raise ConfigError(f"train.warmup_iterations must be at least 1, got {self.warmup_iterations}")
        if not 0 < self.warmup_until_error <= 1:
            raise ConfigError(f"train.warmup_until_error is an error rate in (0, 1], got {self.warmup_until_error}")
        if self.milestones is not None and not all(math.isfinite(m) and m >= 0 for m in self.milestones):
            raise ConfigError(f"train.milestones must be finite and >= 0, got {shown(list(self.milestones))}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"train.threads must be at least 1, got {self.threads}")
        _check_literal(self, "schedule")
        _check_literal(self, "amp")
        _check_literal(self, "compile_mode")
        _check_literal(self, "recipe")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"train.workers must be >= 0, got {self.workers}")
        return self


def apply_recipe(family: str, train: dict, data: dict) -> tuple[dict, dict]:
    """(train, data) mappings with the recipe preset underneath them and train["recipe"] resolved.

    `train.recipe` names the preset; "auto" (or absent) picks he2016a-imagenet for the imagenet
    family and he2016a-cifar otherwise. Keys given explicitly (not None) override the preset.
    """
    name = train.get("recipe") or "auto"
    if name == "auto":
        name = "he2016a-imagenet" if family == "imagenet" else "he2016a-cifar"
    if name not in RECIPES:
        raise ConfigError(f"train.recipe must be auto or one of {', '.join(RECIPES)}, got {name!r}")
    preset = RECIPES[name]
    given_train = {k: v for k, v in train.items() if v is not None}
    given_data = {k: v for k, v in data.items() if v is not None}
    if "iterations" in given_train:  # a length in iterations replaces the preset's epochs and milestones
        preset = {**preset, "train": {k: v for k, v in preset["train"].items() if k not in ("epochs", "milestones")}}
    return {**preset["train"], **given_train, "recipe": name}, {**preset["data"], **given_data}


def from_mapping(cls, mapping: dict | None, where: str):
    """Build dataclass `cls` from a dict, rejecting unknown keys and wrong types.

    `where` names the place for error messages, e.g. "ablations/x.yaml: train".
    """
    mapping = dict(mapping or {})
    reject_unknown(mapping, [f.name for f in dataclasses.fields(cls)], where)
    hints = typing.get_type_hints(cls)
    values = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in mapping.items()}
    try:
        return cls(**values).validate()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def coerce(value: Any, hint, where: str):
    """Check `value` against a type hint; ints pass as floats, lists as tuples."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}, got {shown(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {shown(value)}")
        return tuple(coerce(v, args[0], where) for v in value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint in (int, float, bool, str):
        raise ConfigError(f"{where} must be {'a' if hint is not int else 'an'} {hint.__name__}, got {shown(value)}")
    return value


def _check_literal(obj, name: str) -> None:
    hint = typing.get_type_hints(type(obj))[name]
    allowed = typing.get_args(hint)
    if getattr(obj, name) not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}, got {shown(getattr(obj, name))}")
