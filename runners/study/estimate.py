"""What a study will cost before it runs: its runs, their size and an estimate of GPU-hours.

Where a GPU's rates were measured (`ablate bench --pack` or `ablate doctor` on it, recorded in
results/rates.json, or a file given with `--rates`; runners/train/rates.py), a run's GPU time is
its images at the measured images/s: "measured" for the model itself or its plain/option-A twin
(the same parameters) at the same batch and precision; "scaled from M" for another depth of the
same family and block, whose measured/assumed ratio then scales the assumed estimate below (the
measured model nearest in depth, the same batch first). Otherwise the estimate of one run is the
larger of two bounds, both from assumed rates ("assumed"):

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

from models.registry import SIZE_NEUTRAL, measure, preset_size
from models.spec import ArchSpec

from ..errors import ConfigError
from ..report import paper
from ..tracking.naming import run_params
from ..train.config import DataConfig
from ..train.data import SYNTHETIC_TRAIN
from ..train.images import list_imagefolder
from ..train.rates import rate_at
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
    bound: str  # "compute" or "launch": the larger assumed bound (what a measurement is scaled by)
    cpu_hours: float | None = None  # per run, at a CPU rate (`with_cpu_rate`)
    source: str = "assumed"  # or "measured on GPU (model)", "scaled from model on GPU"

    @property
    def total_gpu_hours(self) -> float:
        return self.runs * self.gpu_hours

    @property
    def total_cpu_hours(self) -> float | None:
        return None if self.cpu_hours is None else self.runs * self.cpu_hours


def size_of(arch) -> dict:
    """{"params", "macs", "input_size"}: the golden file's for a preset, else counted (meta device),
    once per process (a study's trials ask for their variant's at every start) and once for all
    variants that differ only in fields that change no weight or multiply (He 2016b Table 1's
    eleven gate biases are one count)."""
    return _size_of(arch.replace(**{f.name: f.default for f in dataclasses.fields(arch) if f.name in SIZE_NEUTRAL}))


@functools.lru_cache(maxsize=None)
def _size_of(arch) -> dict:
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


def assumed_seconds(arch, cfg, iterations: int, k: int = 1, tflops: float | None = None,
                    launch_ms: float = LAUNCH_MS) -> tuple[float, str]:
    """(seconds, bound) of k models of `arch` trained `iterations` steps of cfg.batch_size as one
    pack (k = 1: alone) at the assumed rates: max(k x compute, launch), the premise of packing."""
    rate = (tflops or TFLOPS.get(arch.family, TFLOPS["cifar"])) * 1e12
    compute = k * 6 * size_of(arch)["macs"] * iterations * cfg.batch_size / rate
    launch = iterations * arch.depth * launch_ms / 1e3
    return max(compute, launch), "compute" if compute >= launch else "launch"


class MeasuredRates:
    """The GPU measurements an estimate takes its rates from (runners/train/rates.py entries; CPU
    ones are left out: the dry run's CPU time has its own rate). Where several GPUs were measured,
    the one measured last."""

    def __init__(self, entries: list[dict]) -> None:
        gpu = [e for e in entries if not str(e["device_name"]).startswith("cpu")]
        self.device = max(gpu, key=lambda e: e.get("measured_at") or "")["device_name"] if gpu else None
        self.entries = [(e, ArchSpec(**e["model"])) for e in gpu if e["device_name"] == self.device]

    def __bool__(self) -> bool:
        return bool(self.entries)

    def seconds(self, arch, cfg, iterations: int, k: int = 1, tflops: float | None = None,
                launch_ms: float = LAUNCH_MS) -> tuple[float, str] | None:
        """(seconds, source) of k models of `arch` packed (k = 1: alone) from a measurement, or None."""
        from ..train.packed import template
        images = k * iterations * cfg.batch_size
        same = [(e, a) for e, a in self.entries if e["precision"] == cfg.precision]
        twins = [(e, a) for e, a in same if e["batch_size"] == cfg.batch_size
                 and template(a).as_dict() == template(arch).as_dict()]
        for e, _ in twins:
            rate = at_most(e, k)
            if rate:
                return images / rate[1], f"measured on {self.device} ({label(e, rate[0], k)})"
        kin = [(e, a) for e, a in same if (a.family, a.block) == (arch.family, arch.block) and at_most(e, k)]
        if not kin:
            return None
        e, a = min(kin, key=lambda ea: (ea[0]["batch_size"] != cfg.batch_size, abs(ea[1].total_depth
                                                                                   - arch.total_depth)))
        got_k, rate = at_most(e, k)
        its = 10_000  # any length: the ratio of measured to assumed does not depend on it
        measured = got_k * its * e["batch_size"] / rate
        assumed = assumed_seconds(a, dataclasses.replace(cfg, batch_size=e["batch_size"]), its, got_k, tflops,
                                  launch_ms)[0]
        mine = assumed_seconds(arch, cfg, iterations, k, tflops, launch_ms)[0]
        return mine * measured / assumed, f"scaled from {label(e, got_k, k)} on {self.device}"


def at_most(entry: dict, k: int) -> tuple[int, float] | None:
    """(K, aggregate images/s) of the entry's largest measured pack size up to k (k = 1: the
    model alone, its separate rate); a larger pack's rate is not assumed."""
    sizes = sorted((row["k"] for row in entry["packs"] if row["k"] <= k
                    and rate_at(entry, row["k"], "packed" if row["k"] > 1 else "separate")), reverse=True)
    if not sizes:
        return None
    return sizes[0], rate_at(entry, sizes[0], "packed" if sizes[0] > 1 else "separate")


def label(entry: dict, got_k: int, k: int) -> str:
    name = entry.get("model_name") or f"d{entry['model'].get('depth')}"
    return name + (f", pack {got_k}" if k > 1 else "") + (f" (largest measured up to {k})" if got_k != k else "")


def estimate(spec: StudySpec, tflops: float | None = None, launch_ms: float = LAUNCH_MS,
             rates: MeasuredRates | None = None) -> tuple[list[VariantCost], str]:
    """Per-variant costs of `spec` (confirmation runs plus search trials), and the source of the
    image count; `tflops` None takes the family's default; `rates` measured GPU rates, where
    the variant's was measured (or can be scaled from one that was)."""
    rows, counted = [], {}  # (dataset name, subset, family) -> (images, source): a folder is listed once
    stages = [("confirm", len(spec.seeds))] + ([("search", spec.search.trials_per_variant)] if spec.search else [])
    for v in spec.variants:
        cx = size_of(v.arch)
        for stage, runs in stages:
            data = spec.data_of(stage)
            key = (data.name, data.subset, v.arch.family)
            if key not in counted:
                counted[key] = train_images(data, v.arch.family)
            n, source = counted[key]
            cfg = v.recipe(spec.train)
            plan = Plan.of(cfg, n - data.val_size)
            seconds, bound = assumed_seconds(v.arch, cfg, plan.iterations, 1, tflops, launch_ms)
            got = rates.seconds(v.arch, cfg, plan.iterations, 1, tflops, launch_ms) if rates else None
            rows.append(VariantCost(v.key if stage == "confirm" else f"{v.key} (search)", cx["params"],
                                    cx["macs"], runs, plan.iterations, plan.iterations * cfg.batch_size,
                                    (got[0] if got else seconds) / 3600, bound,
                                    source=got[1] if got else "assumed"))
    return rows, source


def cell_costs(spec: StudySpec) -> dict[tuple[str, str], float]:
    """{(stage, variant key): MACs per image x images seen} of one cell: the weights of the
    study's ETA (runners/study/progress.py)."""
    return {("search" if r.variant.endswith(" (search)") else "confirm", r.variant.removesuffix(" (search)")):
            float(r.macs * r.images) for r in estimate(spec)[0]}


def dry_run_document(spec: StudySpec, tflops: float | None = None, cpu_rate: tuple[float, str] | None = None,
                     rates: MeasuredRates | None = None) -> dict:
    """`ablate run SPEC --dry-run --json`: every variant's resolved architecture (ArchSpec fields)
    and training config (precision included), its params, MACs and runs, its estimate rows and
    the papers' numbers for it (`paper.numbers_for`), and the data config, as one JSON-ready dict;
    nothing is written. `cpu_rate`: (forward MACs/s, where it came from)."""
    rows, source = estimate(spec, tflops, rates=rates)
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
            "cpu_rate_source": cpu_rate[1] if cpu_rate else None,
            "measured_gpu": rates.device if rates else None, "variants": variants}


def pack_plan(spec: StudySpec, k: int, tflops: float | None = None, launch_ms: float = LAUNCH_MS,
              rates: MeasuredRates | None = None) -> list[dict]:
    """The packs a study's workers form with `resources.pack` K from its confirmation cells (in
    the order they are enqueued and claimed, runners/study/pack.py), each with its estimated
    GPU-hours: from `rates` where measured (or scaled), else assumed to cost its K models' compute
    at one model's launches, max(K x compute, launch), the premise of packing."""
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
        plan = Plan.of(cfg, n - spec.dataset.val_size)

        def cost(size: int) -> tuple[float, str, str]:
            seconds, bound = assumed_seconds(v.arch, cfg, plan.iterations, size, tflops, launch_ms)
            got = rates.seconds(v.arch, cfg, plan.iterations, size, tflops, launch_ms) if rates else None
            return (got[0], bound, got[1]) if got else (seconds, bound, "assumed")

        alone = cost(1)[0]
        for i in range(0, len(cells), k):  # a model that never packs has a group of its own
            chunk = cells[i:i + k]
            seconds, bound, source = cost(len(chunk))
            packs.append({"cells": [f"{c[0].key}/seed={c[1]}" for c in chunk], "size": len(chunk),
                          "gpu_hours": seconds / 3600, "bound": bound, "source": source,
                          "alone_gpu_hours": len(chunk) * alone / 3600})
    return packs
