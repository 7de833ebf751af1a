"""Typed, frozen configuration of the data and the training recipe, and a run's whole configuration
(`Job`) assembled from field values and `--set` overrides (`assemble`).

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
from pathlib import Path
from typing import Any, Literal

from models.fields import option
from models.registry import resolve
from models.spec import ArchSpec, check_declared

from ..errors import ConfigError, reject_unknown, shown
from ..yaml_input import parse_override, set_path

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
    # KaimingHe/resnet-1k-layers (He 2016b Table 4's 4.62, the authors' code on fb.resnet.torch):
    # `th main.lua -depth 1001 -batchSize 64 -nGPU 2 -nEpochs 200`, so BN sees 32 images per GPU
    # (bn_batch 32 is an architecture field: he2016b-table4.yaml sets it); fb.resnet.torch's CIFAR
    # schedule lr 0.1 x 0.1 from epoch 81 and again from 122 (1-based: milestones 80 and 121
    # epochs done), Nesterov momentum 0.9 (dampening 0), weight decay 1e-4 on every parameter,
    # per-channel mean/std normalisation (its fixed CIFAR-10 mean/std; here measured on the
    # training images), pad-4 crops and flips, no warm-up, all 50k training images.
    "resnet-1k-layers": {
        "train": {"epochs": 200, "batch_size": 64, "lr": 0.1, "milestones": [80, 121], "momentum": 0.9,
                  "nesterov": True, "weight_decay": 1e-4, "warmup": False},
        "data": {"val_size": 0, "normalize": "channel"},
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


SEED_LIMIT = 2**32  # numpy's and most generators' seed range; torch's is wider


@dataclass(frozen=True)
class DataConfig:
    """The data of a run. Each field's declaration says what it is (and is its command-line help)."""

    name: str = option("cifar10", "cifar10, cifar100, synthetic, or an ImageFolder root with train/ and test/",
                       flag="--dataset")
    root: str = option("data", "where torchvision downloads CIFAR (ignored for an ImageFolder path)",
                       flag="--data-root")
    val_size: int = option(5000, "training images held out for validation (the paper's 45k/5k); 0: none", low=0)
    subset: int | None = option(None, "use only this many training images (before the validation split)", low=1)
    normalize: Literal["pixel_mean", "channel"] = option(
        "pixel_mean", "subtract the per-pixel mean (the paper) or standardise per channel")
    augment: bool = option(True, "pad 4, random crop, horizontal flip (He 2016a Sec. 4.2)")
    split_seed: int = option(0, "fixes the subset and the validation split (not the training seed)", low=0,
                            below=SEED_LIMIT)
    loader: Literal["auto", "memory", "stream"] = option(
        "auto", "memory: decode everything once into one uint8 tensor on the device (CIFAR-sized data); stream: "
        "decode per batch in DataLoader workers (ImageNet-sized data, images of many sizes); auto: stream when the "
        "folder would not fit (runners/train/stream.py) or a field below asks for per-image resizing")
    # The streamed path's geometry (ImageNet, He 2016a Sec. 3.4); None: images as they are.
    crop: int | None = option(None, "streamed: training and evaluation crop side (224)", low=1)
    scale: tuple[int, ...] | None = option(None, "streamed, crop_mode scale: shorter side uniform in [lo, hi] "
                                           "(256,480)")
    resize: int | None = option(None, "streamed evaluation: shorter side resized to this, then a center crop (256)",
                                low=1)
    crop_mode: Literal["scale", "random_resized"] = option("scale", "scale: He 2016a's scale augmentation; "
                                                           "random_resized: torchvision's RandomResizedCrop")
    lighting: float = option(0.0, "std of AlexNet's PCA lighting noise (fb.resnet.torch: 0.1)", low=0)
    color_jitter: float = option(0.0, "fb.resnet.torch's ColorJitter: brightness, contrast and saturation, each "
                                 "scaled by a factor uniform in [1 - v, 1 + v], in a random order per image (0.4)",
                                 low=0, below=1)
    ten_crop: bool = option(False, "evaluate on 10 crops (corners, center, flips), He 2016a's testing")
    multi_scale: tuple[int, ...] | None = option(
        None, "streamed: after training, test the final net fully convolutionally on whole images at these shorter "
        "sides and average the scores (He 2016a Table 4: 224,256,384,480,640); logged as "
        "test_error_multiscale/_top5_multiscale")
    multi_scale_flip: bool = option(True, "multi_scale: also score each scale's mirror image (VGG's dense "
                                    "evaluation, whose form He 2016a adopts; the paper does not say)")
    stats_images: int = option(10_000, "training images the normalisation statistics are taken from", low=1)

    def __post_init__(self) -> None:
        for name in ("scale", "multi_scale"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def streamed_only(self) -> list[str]:
        """The fields set here that only the streamed path implements (per-image geometry, colour)."""
        return [f for f in ("crop", "scale", "resize", "ten_crop", "multi_scale", "lighting", "color_jitter")
                if getattr(self, f)]

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
        if self.multi_scale is not None and (not self.multi_scale or min(self.multi_scale) < 1):
            raise ConfigError(f"dataset.multi_scale must be a list of positive shorter sides, "
                              f"got {list(self.multi_scale)}")
        if self.ten_crop and self.crop is None:
            raise ConfigError("dataset.ten_crop needs dataset.crop (the side of the ten crops)")
        if self.lighting < 0 or self.stats_images <= 0:
            raise ConfigError("dataset.lighting must be >= 0 and dataset.stats_images positive")
        if not 0 <= self.color_jitter < 1:
            raise ConfigError(f"dataset.color_jitter must be in [0, 1), got {self.color_jitter}")
        check_declared(self)  # what the declarations bound and the checks above do not name
        return self


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. Give `epochs` or `iterations` (default: the paper's 64k iterations).
    Each field's declaration says what it is (and is its command-line help)."""

    epochs: int | None = option(None, "the run's length in epochs", high=1_000_000)
    iterations: int | None = option(None, "the run's length in iterations (default: the paper's 64k)",
                                       high=10**9)
    batch_size: int = option(128, "the global batch (split among processes)", high=1 << 20)
    lr: float = option(0.1, "the initial learning rate", high=1e4)  # doctor diverges a run at 1e4
    momentum: float = option(0.9, "SGD momentum", low=0, high=1)
    weight_decay: float = option(1e-4, "on every parameter, BN included (the papers' recipe)", low=0, high=1)
    gate_bias_decay: bool = option(True, "weight decay on the gates' b_g too (He 2016b does not say; Caffe and "
                                   "Torch decay every parameter, which pulls b_g toward 0 as it trains); false: "
                                   "b_g is not decayed")
    nesterov: bool = option(False, "Nesterov momentum")
    schedule: Literal["step", "cosine", "constant", "plateau"] = option(
        "step", "step: lr x gamma at each milestone; plateau: divide by gamma when the validation error stops "
        "improving (He 2016a Sec. 3.4)")
    milestones: tuple[float, ...] | None = option(None, "step schedule, in the run's unit (comma-separated; "
                                                  "default: 1/2 and 3/4 of the run, 32k and 48k of 64k)")
    gamma: float = option(0.1, "lr factor at each milestone or plateau", high=1)
    plateau_patience: int = option(5, "schedule plateau: epochs without an improvement before the lr drops",
                                   low=1)
    plateau_threshold: float = option(0.001, "schedule plateau: the improvement on the best error that counts "
                                      "(validation error, else training error)", low=0, below=1)
    warmup: bool = option(False, "He 2016a Sec. 4.2 (ResNet-110): lr warmup_lr until the training error is below "
                          "warmup_until_error, then the schedule")
    warmup_lr: float = option(0.01, "the warm-up's lr", high=1e4)
    warmup_until_error: float = option(0.8, "the training error that ends the warm-up (an error rate in (0, 1])")
    warmup_iterations: int | None = option(None, "He 2016b Appendix: warm up for this many iterations instead "
                                           "(400)", low=1)
    seed: int = option(0, "initialisation and data order", low=0, below=SEED_LIMIT)
    deterministic: bool = option(False, "deterministic algorithms: a resumed run ends with the same numbers")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    precision: Literal["fp32", "tf32", "bf16"] = option(
        "fp32", "fp32: true fp32, TF32 off for matmuls and cuDNN (the papers); tf32: TF32 allowed on CUDA (fp32 on "
        "CPU); bf16: autocast of the body, the head in fp32 (opt-in: at b_g = -6 a gate's carry rounds "
        "0.99753 -> 0.99609)")
    channels_last: bool = option(True, "the layout of tensor-core convolutions (faster on CPU too: README)")
    compile: bool = option(False, "torch.compile the training forward")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = option(
        "default", "torch.compile's mode; reduce-overhead replays CUDA graphs (`ablate doctor` measures both)")
    eval_batch_size: int | None = option(None, "default: 1000 on CUDA, 250 on CPU (README: Performance)")
    probe: bool = option(True, "the layer-response probe (He 2016a Fig. 7) after training")
    threads: int | None = option(None, "CPU threads for this process (default: all cores, split among local "
                                 "ranks)", low=1)
    recipe: Literal["auto", "he2016a-cifar", "he2016a-imagenet", "torchvision-imagenet", "resnet-1k-layers"] = option(
        "auto", "the named preset laid under the explicit values (auto: he2016a-imagenet for the imagenet family, "
        "he2016a-cifar otherwise)")
    sync_bn: bool = option(False, "with several processes: BN statistics over the global batch")
    workers: int | None = option(None, "streamed data: decoding processes per rank (default: cores per rank, "
                                 "at most 8)", low=0)

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
        _check_literal(self, "precision")
        _check_literal(self, "compile_mode")
        _check_literal(self, "recipe")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"train.workers must be >= 0, got {self.workers}")
        check_declared(self)  # what the declarations bound and the checks above do not name
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


# The configuration classes by section, as `--set SECTION.FIELD=V` and `ablate train`'s flags name
# them; every flag, spec field and check is derived from these classes' declarations.
CONFIG_CLASSES: dict[str, type] = {"arch": ArchSpec, "train": TrainConfig, "data": DataConfig}


def arch_of(model: str | None, fields: dict) -> ArchSpec:
    """The architecture of a registered `model` (or, without one, of the spec class's defaults)
    with `fields` over it, each checked against its declared type. The class is the one in use
    (CONFIG_CLASSES["arch"]): a subclass that declares more fields takes a preset's values too.
    Stages given without a depth define the depth."""
    cls = CONFIG_CLASSES["arch"]
    hints = typing.get_type_hints(cls)
    typed = {k: coerce(v, hints[k], k) if k in hints else v for k, v in fields.items()}
    if model is None:
        if "stages" in typed and "depth" not in typed:
            typed["depth"] = None
        reject_unknown(typed, [f.name for f in dataclasses.fields(cls)], "model")
        return cls(**typed).validate()
    preset = resolve(model)
    if type(preset) is not cls:
        preset = cls(**{f.name: getattr(preset, f.name) for f in dataclasses.fields(preset)})
    return preset.replace(**typed) if typed else preset.validate()


@dataclass(frozen=True)
class Job:
    model: str  # the name given: a registered model or [preact-](resnet|plain)<depth>
    arch: ArchSpec
    train: TrainConfig
    data: DataConfig


def assemble(model: str, values: dict[str, dict], sets: list[str] | tuple[str, ...] = ()) -> Job:
    """The job of `model` with field `values` ({"arch"|"train"|"data": {field: value}}, None
    ignored) and `--set` overrides (`arch.F=V` or bare `F=V`, `train.F=V`, `data.F=V`: the grammar
    of `ablate run --set`) over them; the recipe preset (train.recipe) lies underneath.
    ConfigError on any bad value."""
    sections = {s: {k: v for k, v in values.get(s, {}).items() if v is not None} for s in CONFIG_CLASSES}
    for item in sets:
        parts, value = parse_override(item)
        if len(parts) == 1:
            parts = ["arch", *parts]
        if parts[0] not in sections:
            raise ConfigError(f"--set {shown(item)}: the key must be arch.FIELD (or FIELD), train.FIELD or data.FIELD")
        set_path(sections, parts, value, item)
    dataset = sections["data"].get("name")
    if isinstance(dataset, str) and dataset not in BUILTIN_DATASETS:
        # a path: absolute, so the config (and its hash) does not depend on the working directory
        sections["data"]["name"] = str(Path(dataset).expanduser().resolve())
    if sections["train"].get("epochs") is not None and sections["train"].get("iterations") is not None:
        raise ConfigError("give --epochs or --iterations, not both")
    arch = arch_of(model, sections["arch"])
    train_map, data_map = apply_recipe(arch.family, sections["train"], sections["data"])
    return Job(model, arch, from_mapping(CONFIG_CLASSES["train"], train_map, "train"),
               from_mapping(CONFIG_CLASSES["data"], data_map, "dataset"))
