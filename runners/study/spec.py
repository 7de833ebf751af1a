"""Ablation study specs (ablations/*.yaml): load, override, validate, expand into variants.

A spec is plain YAML read by a strict safe loader (runners/yaml_input.py: no tags, aliases,
merge keys or duplicate keys; size-limited); no string in it is ever evaluated. Every error
names the file, the field and what is allowed, and is raised before anything is created in a
store. The format is documented in ablations/README.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.registry import resolve
from models.spec import BASE_WIDTH, ArchSpec

from ..errors import ConfigError, cut, reject_unknown, shown
from ..train.config import (BUILTIN_DATASETS, CONFIG_CLASSES, SEED_LIMIT, DataConfig, TrainConfig, apply_recipe,
                            arch_of, coerce, from_mapping)
from ..tracking.naming import fmt, variant_name
from ..yaml_input import parse_override, read_yaml_file, set_path

TOP_LEVEL = ("name", "description", "dataset", "model", "train", "search", "seeds", "attempts", "resources")
NOT_IDENTITY = ("description", "attempts")  # may change between runs of one study
DEFAULT_ATTEMPTS = 3
MAX_NAME = 64
# Upper bounds on a study's size: each far above what the papers' studies need (5 seeds, 20
# variants, tens of search trials), and each a one-line refusal before anything is written
# instead of a study that exhausts memory or never starts. Raise one here for a larger study.
MAX_SEEDS = 1000  # seeds of one spec (a count or a list)
MAX_VARIANTS = 1000  # variants of the model grid(s), counted before any is built
MAX_CELLS = 10_000  # variants x seeds: trials of the confirmation study
MAX_TRIALS_PER_VARIANT = 10_000  # search.trials_per_variant
MAX_BLOCKS = 1000  # residual blocks of one net (He 2016a's 1202-layer net has 600)
# Hyperparameters a search may tune: the recipe's numeric fields.
SEARCHABLE = {"lr": float, "weight_decay": float, "momentum": float, "batch_size": int,
              "warmup_lr": float, "gamma": float}


@dataclass(frozen=True)
class Variant:
    """One cell of the model grid: an architecture and the recipe overrides that go with it."""

    key: str  # unique, readable: 'cifar-d20-basic-A-post-w1' (+ '+warmup=true' for overrides)
    arch: ArchSpec
    train_overrides: tuple[tuple[str, Any], ...] = ()
    model_name: str | None = None

    def recipe(self, base: TrainConfig, **hparams) -> TrainConfig:
        return dataclasses.replace(base, **dict(self.train_overrides), **hparams).validate()


@dataclass(frozen=True)
class SearchSpec:
    trials_per_variant: int
    space: dict  # name -> {"low", "high", "log"} or {"choices": [...]}
    pruner: str = "median"  # median | none; prunes only among trials of the same variant
    startup_trials: int = 3  # trials before the median pruner may prune
    # The search's own validation split. The papers chose their recipe on 45k/5k and then trained
    # the reported nets on all 50k: `search.val_size: 5000` with `dataset.val_size: 0` does that.
    # None: the search selects on dataset.val_size, which the confirmation runs then also hold out.
    val_size: int | None = None


@dataclass(frozen=True)
class Resources:
    gpus_per_trial: int = 1  # >1: each trial runs as that many processes (runners/train/distributed.py)
    # >1: a worker trains up to that many cells that pack (seeds, plain/option-A twins) as one step
    # (runners/train/packed.py, runners/study/pack.py); "auto": measured on the worker's GPU, 1 on a CPU.
    pack: int | str = 1


@dataclass(frozen=True)
class StudySpec:
    name: str
    path: str
    dataset: DataConfig
    train: TrainConfig
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    search: SearchSpec | None
    resolved: dict  # the spec after --set overrides, as logged to MLflow
    resources: Resources = Resources()

    attempts: int = 3  # tries per cell before the study gives up on it (interruptions not counted)

    def data_of(self, stage: str) -> DataConfig:
        """The data of a stage's trials: a search may hold out its own validation split."""
        if stage == "search" and self.search is not None and self.search.val_size is not None:
            return dataclasses.replace(self.dataset, val_size=self.search.val_size)
        return self.dataset

    @property
    def fingerprint(self) -> str:
        """Changes when anything that defines the trials changes (checked on resume)."""
        body = {k: v for k, v in self.resolved.items() if k not in NOT_IDENTITY}
        if isinstance(body.get("resources"), dict):  # packing changes how cells run, not what they compute
            body["resources"] = {k: v for k, v in body["resources"].items() if k != "pack"}
            if not body["resources"]:
                del body["resources"]
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def variant(self, key: str) -> Variant:
        return next(v for v in self.variants if v.key == key)


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, check_data: bool = True) -> StudySpec:
    """Read, override (`key.path=value`) and validate a study spec.

    check_data=False skips checking that an ImageFolder dataset exists: figures are drawn from
    the tracking store long after the data may be gone.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"spec file {cut(str(path), 200)} not found; the shipped specs are in ablations/")
    raw = read_yaml_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a spec is a mapping with fields {', '.join(TOP_LEVEL)}")
    for item in overrides:
        set_path(raw, *parse_override(item), item)
    return parse_spec(raw, str(path), check_data=check_data)


def parse_spec(raw: dict, where: str, check_data: bool = True) -> StudySpec:
    reject_unknown(raw, TOP_LEVEL, where)
    name = raw.get("name")
    # The name becomes a file name (journal, checkpoints), an MLflow experiment and a study name.
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) \
            or len(name) > MAX_NAME or ".." in name:
        raise ConfigError(f"{where}: name must be a word of at most {MAX_NAME} letters, digits, '-', '_' or '.', "
                          f"got {shown(name)}")
    if not isinstance(raw.get("description", ""), str):
        raise ConfigError(f"{where}: description must be text, got {shown(raw['description'])}")
    if "model" not in raw:
        raise ConfigError(f"{where}: model is required (the grid of architectures to compare)")
    grids = raw["model"] if isinstance(raw["model"], list) else [raw["model"]]
    # The recipe preset (train.recipe; auto: by the grids' family) lies under the spec's values.
    dataset_raw = raw.get("dataset")
    train_map, data_map = apply_recipe(_family(grids), dict(_mapping(raw.get("train"), f"{where}: train")),
                                       dict(_mapping({"name": dataset_raw} if isinstance(dataset_raw, str)
                                                     else dataset_raw, f"{where}: dataset")))
    dataset = _parse_dataset(data_map, where, check_data)
    train = from_mapping(TrainConfig, train_map, f"{where}: train")
    resources = _parse_resources(raw.get("resources"), where, train)
    variants: dict[str, Variant] = {}
    for i, grid in enumerate(grids):
        label = f"{where}: model" + (f".{i}" if isinstance(raw["model"], list) else "")
        for v in _expand_grid(_mapping(grid, label), label, train):
            variants.setdefault(v.key, v)
    seeds = _parse_seeds(raw.get("seeds", [0]), where)
    if len(variants) * len(seeds) > MAX_CELLS:
        raise ConfigError(f"{where}: {len(variants)} variants x {len(seeds)} seeds is {len(variants) * len(seeds):,} "
                          f"cells, above the limit of {MAX_CELLS:,} (MAX_CELLS in runners/study/spec.py: raise it "
                          "there for a larger study)")
    search = _parse_search(raw.get("search"), where, dataset)
    attempts = raw.get("attempts", DEFAULT_ATTEMPTS)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        raise ConfigError(f"{where}: attempts must be a positive integer (tries per cell), got {shown(attempts)}")
    resolved = dict(raw, dataset=dataclasses.asdict(dataset))
    return StudySpec(name=name, path=where, dataset=dataset, train=train, variants=tuple(variants.values()),
                     seeds=seeds, search=search, resolved=resolved, attempts=attempts, resources=resources)


def _family(grids: list) -> str:
    """The one model family of the grids (a registered name counts as its family), else ''."""
    families = set()
    for grid in grids:
        if not isinstance(grid, dict):
            return ""
        value = grid.get("family", "cifar")
        if "name" in grid and "family" not in grid and isinstance(grid["name"], str):
            try:
                value = resolve(grid["name"]).family
            except ConfigError:
                return ""  # reported with its place when the grid is expanded
        families.update(value if isinstance(value, list) else [value])
    return families.pop() if len(families) == 1 else ""


def _parse_resources(value, where: str, train: TrainConfig) -> Resources:
    value = _mapping(value, f"{where}: resources")
    unknown = sorted(set(value) - {"gpus_per_trial", "pack"})
    if unknown:
        raise ConfigError(f"{where}: resources: unknown field(s) {', '.join(unknown)}; allowed: gpus_per_trial, pack")
    gpus = value.get("gpus_per_trial", 1)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise ConfigError(f"{where}: resources.gpus_per_trial must be a positive integer, got {gpus!r}")
    if train.batch_size % gpus:
        raise ConfigError(f"{where}: train.batch_size {train.batch_size} is the global batch and must divide "
                          f"evenly among resources.gpus_per_trial {gpus}")
    pack = value.get("pack", 1)
    if pack != "auto" and (not isinstance(pack, int) or isinstance(pack, bool) or pack < 1):
        raise ConfigError(f"{where}: resources.pack must be a positive integer or auto, got {pack!r}")
    if pack != 1 and gpus > 1:
        raise ConfigError(f"{where}: resources.pack packs models into one process; it does not combine with "
                          f"resources.gpus_per_trial {gpus}: set one of them to 1")
    return Resources(gpus, pack)


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {shown(value)}")
    return value


def _parse_dataset(value, where: str, check_data: bool) -> DataConfig:
    if isinstance(value, str):
        value = {"name": value}
    cfg = from_mapping(DataConfig, _mapping(value, f"{where}: dataset"), f"{where}: dataset")
    if check_data and cfg.name not in BUILTIN_DATASETS:
        root = Path(cfg.name)
        missing = [d for d in ("train", "test") if not (root / d).is_dir()]
        if missing:
            raise ConfigError(f"{where}: dataset.name {cfg.name!r} is not one of {', '.join(BUILTIN_DATASETS)} "
                              f"nor an ImageFolder root with train/ and test/ (missing: {', '.join(missing)})")
    return cfg


def _expand_grid(grid: dict, where: str, train: TrainConfig) -> list[Variant]:
    """Every combination of the list-valued fields of one model grid."""
    arch_fields = tuple(f.name for f in dataclasses.fields(CONFIG_CLASSES["arch"]))
    reject_unknown(grid, ("name",) + arch_fields + ("train",), where)
    overrides = _mapping(grid.get("train"), f"{where}.train")
    # Validate the overrides as a whole recipe, so a typo fails here and not mid-study.
    from_mapping(TrainConfig, {**_asdict_set(train), **overrides}, f"{where}.train")
    axes = {}
    for k, v in grid.items():
        if k == "train":
            continue
        # `stages` is itself a list: only a list of lists sweeps it.
        sweep = isinstance(v, list) and (k != "stages" or (v and isinstance(v[0], list)))
        axes[k] = v if sweep else [v]
        if sweep and not v:
            raise ConfigError(f"{where}.{k}: an empty list leaves nothing to run")
    names = list(axes)
    count = math.prod(len(axes[n]) for n in names)
    if count > MAX_VARIANTS:
        raise ConfigError(f"{where}: the grid has {count:,} variants, above the limit of {MAX_VARIANTS:,} "
                          "(MAX_VARIANTS in runners/study/spec.py: raise it there for a larger grid)")
    variants = []
    for combo in itertools.product(*(axes[n] for n in names)):
        fields = dict(zip(names, combo))
        base = fields.pop("name", None)
        try:
            arch = arch_of(base, fields)
        except ConfigError as e:
            shown = ", ".join(f"{k}={fmt(v)}" for k, v in fields.items())
            raise ConfigError(f"{where} ({shown}): {e}") from None
        except TypeError as e:
            raise ConfigError(f"{where}: {cut(str(e), 200)}") from None
        _check_width(arch, f"{where} ({', '.join(f'{k}={fmt(v)}' for k, v in fields.items())})")
        if sum(arch.stage_depths) > MAX_BLOCKS:
            raise ConfigError(f"{where}: {sum(arch.stage_depths):,} blocks in one net, above the limit of "
                              f"{MAX_BLOCKS:,} (MAX_BLOCKS in runners/study/spec.py: raise it there for a deeper net)")
        key = variant_name(arch) + "".join(f"+{k}={fmt(v)}" for k, v in sorted(overrides.items()))
        variants.append(Variant(key=key, arch=arch, model_name=base,
                                train_overrides=tuple(sorted(overrides.items()))))
    return variants


def _check_width(arch: ArchSpec, where: str) -> None:
    """At least one channel in the narrowest layer: a width the model code would round to 0."""
    if round(BASE_WIDTH[arch.family] * arch.width) < 1:
        raise ConfigError(f"{where}: width {fmt(arch.width)} leaves the {arch.family} stem with no channel "
                          f"(base {BASE_WIDTH[arch.family]}); use width >= {1 / BASE_WIDTH[arch.family]:.3g}")


def _asdict_set(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _parse_seeds(value, where: str) -> tuple[int, ...]:
    count = value if isinstance(value, int) and not isinstance(value, bool) else len(value) \
        if isinstance(value, list) else None
    if count is not None and count > MAX_SEEDS:
        raise ConfigError(f"{where}: {count:,} seeds is above the limit of {MAX_SEEDS:,} (MAX_SEEDS in "
                          "runners/study/spec.py: raise it there for more)")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return tuple(range(value))  # `seeds: 3` means seeds 0, 1, 2
    if (isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
            and len(set(value)) == len(value)):
        bad = [s for s in value if not 0 <= s < SEED_LIMIT]
        if bad:
            raise ConfigError(f"{where}: seeds must lie in [0, 2**32), got {shown(bad[0])}")
        return tuple(value)
    raise ConfigError(f"{where}: seeds must be a list of distinct integers or a count, got {shown(value)}")


def _parse_search(value, where: str, dataset: DataConfig) -> SearchSpec | None:
    if value is None:
        return None
    value = _mapping(value, f"{where}: search")
    reject_unknown(value, ("trials_per_variant", "space", "pruner", "startup_trials", "val_size"), f"{where}: search")
    trials = value.get("trials_per_variant")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConfigError(f"{where}: search.trials_per_variant must be a positive integer, got {shown(trials)}")
    if trials > MAX_TRIALS_PER_VARIANT:
        raise ConfigError(f"{where}: search.trials_per_variant {trials:,} is above the limit of "
                          f"{MAX_TRIALS_PER_VARIANT:,} (MAX_TRIALS_PER_VARIANT in runners/study/spec.py: "
                          "raise it there)")
    space = _mapping(value.get("space"), f"{where}: search.space")
    if not space:
        raise ConfigError(f"{where}: search.space is empty; give e.g. lr: {{low: 0.01, high: 0.4, log: true}}")
    for name, dist in space.items():
        at = f"{where}: search.space.{name}"
        if name not in SEARCHABLE:
            raise ConfigError(f"{where}: search.space.{cut(str(name), 40)}: not a searchable hyperparameter; "
                              f"allowed: {', '.join(SEARCHABLE)}")
        dist = _mapping(dist, at)
        if "choices" in dist:
            if set(dist) != {"choices"} or not isinstance(dist["choices"], list) or not dist["choices"]:
                raise ConfigError(f"{at}: give choices: [a, b, ...] alone")
            continue
        extra = sorted(set(dist) - {"low", "high", "log"})
        if extra or "low" not in dist or "high" not in dist:
            raise ConfigError(f"{at}: give low, high and optionally log (or choices); got {sorted(dist)}")
        low, high = (coerce(dist[k], SEARCHABLE[name], f"{at}.{k}") for k in ("low", "high"))
        if not low < high or (dist.get("log") and low <= 0):
            raise ConfigError(f"{at}: need 0 < low < high for a log scale and low < high always, got {low}, {high}")
    pruner = value.get("pruner", "median")
    if pruner not in ("median", "none"):
        raise ConfigError(f"{where}: search.pruner must be median or none, got {shown(pruner)}")
    val_size = value.get("val_size")
    if val_size is not None and (not isinstance(val_size, int) or isinstance(val_size, bool) or val_size < 1):
        raise ConfigError(f"{where}: search.val_size must be a positive integer, got {shown(val_size)}")
    if val_size is None and dataset.val_size <= 0:
        raise ConfigError(f"{where}: a search selects on a validation split: set search.val_size (e.g. 5000; "
                          "the confirmation runs then train on dataset.val_size's split) or dataset.val_size > 0")
    if val_size is not None and dataset.subset is not None and dataset.subset <= val_size:
        raise ConfigError(f"{where}: search.val_size ({val_size}) must be below dataset.subset ({dataset.subset})")
    startup = value.get("startup_trials", 3)
    if not isinstance(startup, int) or isinstance(startup, bool) or not 0 <= startup <= MAX_TRIALS_PER_VARIANT:
        raise ConfigError(f"{where}: search.startup_trials must be an integer in [0, {MAX_TRIALS_PER_VARIANT:,}], "
                          f"got {shown(startup)}")
    return SearchSpec(trials_per_variant=trials, space=space, pruner=pruner, startup_trials=int(startup),
                      val_size=val_size)
