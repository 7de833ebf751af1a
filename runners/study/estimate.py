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

On a CPU the GPU-hours mean little, so the dry run also gives CPU-hours at a measured rate: MACs
per image x images seen, over the forward MACs per second a ResNet-20 training step reached on
this machine in about two seconds (`measure_cpu_rate`), or at a rate recorded earlier and given
back (`--cpu-rate`). Per-layer overheads make the deeper nets somewhat slower per MAC than the
rate says: an estimate, and the output says which rate it used.

Sizes come from `models/complexity.json` where a variant is a registered preset (up to fields
that change no weight or multiply, models.registry.SIZE_NEUTRAL), and are counted otherwise.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path

from models.registry import measure, preset_size

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
    cpu_hours: float | None = None  # per run, at a CPU rate (`with_cpu_rate`)

    @property
    def total_gpu_hours(self) -> float:
        return self.runs * self.gpu_hours

    @property
    def total_cpu_hours(self) -> float | None:
        return None if self.cpu_hours is None else self.runs * self.cpu_hours


@functools.lru_cache(maxsize=None)
def size_of(arch) -> dict:
    """{"params", "macs", "input_size"}: the golden file's for a preset, else counted (meta device),
    once per process (a study's trials ask for their variant's at every start)."""
    return preset_size(arch) or measure(arch)


def measure_cpu_rate(seconds: float = 2.0, batch: int = 64) -> float:
    """Forward MACs per second of training (forward, backward, SGD step) that a ResNet-20 reaches
    on this machine's CPU: one warm-up step, then steps for about `seconds`."""
    import torch

    from models.registry import build
    model = build("resnet20")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    steps, start = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return size_of(model.spec)["macs"] * batch * steps / (time.perf_counter() - start)


def with_cpu_rate(rows: list[VariantCost], rate: float) -> list[VariantCost]:
    """`rows` with CPU-hours per run at `rate` forward MACs per second."""
    return [dataclasses.replace(r, cpu_hours=r.macs * r.images / rate / 3600) for r in rows]


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
        cx = size_of(v.arch)
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
            compute = 6 * cx["macs"] * images / rate
            launch = plan.iterations * v.arch.depth * launch_ms / 1e3
            rows.append(VariantCost(v.key if stage == "confirm" else f"{v.key} (search)", cx["params"],
                                    cx["macs"], runs, plan.iterations, images, max(compute, launch) / 3600,
                                    "compute" if compute >= launch else "launch"))
    return rows, source


def cell_costs(spec: StudySpec) -> dict[tuple[str, str], float]:
    """{(stage, variant key): MACs per image x images seen} of one cell: the weights of the
    study's ETA (runners/study/progress.py)."""
    return {("search" if r.variant.endswith(" (search)") else "confirm", r.variant.removesuffix(" (search)")):
            float(r.macs * r.images) for r in estimate(spec)[0]}


def dry_run_document(spec: StudySpec, tflops: float | None = None, cpu_rate: tuple[float, str] | None = None) -> dict:
    """`ablate run SPEC --dry-run --json`: every variant's resolved architecture (ArchSpec fields)
    and training config (precision included), its params, MACs and runs, its estimate rows and
    the papers' numbers for it (`paper.numbers_for`), and the data config, as one JSON-ready dict;
    nothing is written. `cpu_rate`: (forward MACs/s, where it came from)."""
    rows, source = estimate(spec, tflops)
    if cpu_rate:
        rows = with_cpu_rate(rows, cpu_rate[0])
    variants = []
    for v in spec.variants:
        own = [r for r in rows if r.variant in (v.key, f"{v.key} (search)")]
        recipe = v.recipe(spec.train)
        variants.append({"variant": v.key, "arch": v.arch.as_dict(),
                         "train": dataclasses.asdict(recipe), "params": own[0].params,
                         "macs": own[0].macs, "runs": sum(r.runs for r in own),
                         "estimate": [{**dataclasses.asdict(r), "total_gpu_hours": r.total_gpu_hours,
                                       "total_cpu_hours": r.total_cpu_hours} for r in own],
                         "paper": paper.numbers_for(run_params(v.arch, recipe, spec.dataset))})
    return {"study": spec.name, "data": dataclasses.asdict(spec.dataset), "training_images": source,
            "runs": sum(r.runs for r in rows),
            "gpu_hours": sum(r.total_gpu_hours for r in rows), "tflops": tflops,
            "cpu_hours": sum(r.total_cpu_hours for r in rows) if cpu_rate else None,
            "cpu_rate_macs_per_s": cpu_rate[0] if cpu_rate else None,
            "cpu_rate_source": cpu_rate[1] if cpu_rate else None, "variants": variants}


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
        macs = size_of(v.arch)["macs"]
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
