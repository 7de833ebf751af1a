"""What a study will cost before it runs: its runs, their size and an estimate of GPU-hours.

The estimate of one run is the larger of two bounds, both from assumed rates (not measurements;
`ablate doctor --device cuda` measures a GPU):

* compute: 6 x MACs per image x images seen (forward 2 x MACs, backward twice that) at a
  sustained `tflops` (defaults by family, TFLOPS below: small CIFAR convolutions keep a GPU's
  tensor cores less busy than ImageNet's);
* launch: iterations x depth x `launch_ms`, the eager-mode kernel launches of a step (forward,
  backward and optimizer) that bound the deep, thin CIFAR nets (ResNet-1202) whatever the GPU.

Evaluation (every epoch, 10-crop if asked) and data loading are not counted. A search trial is
counted at its full length (pruning only shortens it), so search costs are upper bounds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from models.network import ResNet

from ..errors import ConfigError
from ..report import paper
from ..tracking.naming import run_params
from ..train.config import DataConfig
from ..train.data import SYNTHETIC_TRAIN
from ..train.images import list_imagefolder
from ..train.schedule import Plan
from .spec import StudySpec

TFLOPS = {"cifar": 25.0, "imagenet": 60.0}  # assumed sustained bf16 rates per GPU, by family
LAUNCH_MS = 0.11  # assumed per layer per step (forward + backward + optimizer kernels)
IMAGENET_TRAIN = 1_281_167  # ILSVRC-2012 training images, when the folder is not here to count
KNOWN_TRAIN = {"cifar10": 50_000, "cifar100": 50_000}


@dataclass(frozen=True)
class VariantCost:
    variant: str
    params: int
    macs: int  # per image, at the variant's input size
    runs: int  # confirmation runs (seeds) + search trials
    iterations: int  # per run
    images: int  # per run: iterations x batch
    gpu_hours: float  # per run
    bound: str  # "compute" or "launch"

    @property
    def total_gpu_hours(self) -> float:
        return self.runs * self.gpu_hours


def train_images(data: DataConfig, family: str) -> tuple[int, str]:
    """(training images before the validation split, where the number comes from)."""
    if data.subset is not None:
        return data.subset, "dataset.subset"
    if data.name in KNOWN_TRAIN:
        return KNOWN_TRAIN[data.name], data.name
    if data.name == "synthetic":
        return SYNTHETIC_TRAIN, "synthetic"
    root = Path(data.name).expanduser()
    if (root / "train").is_dir():
        return sum(len(files) for files in list_imagefolder(root)["train"].values()), f"counted in {root}"
    if family == "imagenet":
        return IMAGENET_TRAIN, f"{root} is not here: ImageNet's {IMAGENET_TRAIN:,} assumed"
    raise ConfigError(f"dataset {data.name} is not here to count its training images; run where it is, "
                      "or give dataset.subset")


def estimate(spec: StudySpec, tflops: float | None = None,
             launch_ms: float = LAUNCH_MS) -> tuple[list[VariantCost], str]:
    """Per-variant costs of `spec` (confirmation runs plus search trials), and the source of the
    image count; `tflops` None takes the family's default."""
    rows, counted = [], {}  # (dataset name, subset, family) -> (images, source): a folder is listed once
    stages = [("confirm", len(spec.seeds))] + ([("search", spec.search.trials_per_variant)] if spec.search else [])
    for v in spec.variants:
        with torch.device("meta"):  # shapes only
            cx = ResNet(v.arch).complexity()
        rate = (tflops or TFLOPS.get(v.arch.family, TFLOPS["cifar"])) * 1e12
        for stage, runs in stages:
            data = spec.data_of(stage)
            key = (data.name, data.subset, v.arch.family)
            if key not in counted:
                counted[key] = train_images(data, v.arch.family)
            n, source = counted[key]
            cfg = v.recipe(spec.train)
            plan = Plan.of(cfg, n - data.val_size)
            images = plan.iterations * cfg.batch_size
            compute = 6 * cx.macs * images / rate
            launch = plan.iterations * v.arch.depth * launch_ms / 1e3
            rows.append(VariantCost(v.key if stage == "confirm" else f"{v.key} (search)", cx.params, cx.macs, runs,
                                    plan.iterations, images, max(compute, launch) / 3600,
                                    "compute" if compute >= launch else "launch"))
    return rows, source


def dry_run_document(spec: StudySpec, tflops: float | None = None) -> dict:
    """`ablate run SPEC --dry-run --json`: the data config, and every variant's resolved
    architecture (ArchSpec fields) and training config (precision included), its params, MACs and
    runs, its estimate rows and the papers' numbers for it (`paper.numbers_for`), as one
    JSON-ready dict; nothing is written."""
    rows, source = estimate(spec, tflops)
    variants = []
    for v in spec.variants:
        own = [r for r in rows if r.variant in (v.key, f"{v.key} (search)")]
        recipe = v.recipe(spec.train)
        variants.append({"variant": v.key, "arch": v.arch.as_dict(),
                         "train": dataclasses.asdict(recipe), "params": own[0].params,
                         "macs": own[0].macs, "runs": sum(r.runs for r in own),
                         "estimate": [{**dataclasses.asdict(r), "total_gpu_hours": r.total_gpu_hours} for r in own],
                         "paper": paper.numbers_for(run_params(v.arch, recipe, spec.dataset))})
    return {"study": spec.name, "data": dataclasses.asdict(spec.dataset), "training_images": source,
            "runs": sum(r.runs for r in rows),
            "gpu_hours": sum(r.total_gpu_hours for r in rows), "tflops": tflops, "variants": variants}


def pack_plan(spec: StudySpec, k: int, tflops: float | None = None, launch_ms: float = LAUNCH_MS) -> list[dict]:
    """The packs a study's workers form with `resources.pack` K from its confirmation cells (in
    the order they are enqueued and claimed, runners/study/pack.py), each with its estimated
    GPU-hours. A pack's step is assumed to do its K models' compute at one model's launches:
    max(K x compute, launch) per pack, the premise of packing, which `ablate bench --pack`
    measures (an assumption, like the rates above)."""
    from ..train.packed import pack_key
    groups: dict = {}
    for v in spec.variants:
        for seed in spec.seeds:
            cfg = v.recipe(spec.train, seed=seed)
            key = pack_key(v.arch, cfg, spec.dataset) or ("alone", v.key, seed)
            groups.setdefault(key, []).append((v, seed, cfg))
    n, _ = train_images(spec.dataset, spec.variants[0].arch.family)
    packs = []
    for cells in groups.values():
        v, _, cfg = cells[0]
        with torch.device("meta"):
            macs = ResNet(v.arch).complexity().macs
        plan = Plan.of(cfg, n - spec.dataset.val_size)
        rate = (tflops or TFLOPS.get(v.arch.family, TFLOPS["cifar"])) * 1e12
        compute = 6 * macs * plan.iterations * cfg.batch_size / rate
        launch = plan.iterations * v.arch.depth * launch_ms / 1e3
        for i in range(0, len(cells), k):  # a model that never packs has a group of its own
            chunk = cells[i:i + k]
            work = len(chunk) * compute
            packs.append({"cells": [f"{c[0].key}/seed={c[1]}" for c in chunk], "size": len(chunk),
                          "gpu_hours": max(work, launch) / 3600, "bound": "compute" if work >= launch else "launch",
                          "alone_gpu_hours": len(chunk) * max(compute, launch) / 3600})
    return packs
