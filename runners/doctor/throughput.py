"""Throughput: the bench's ours/conventional ratio, images/s of ResNet-20/56/110, training FLOP/s
against the same run's matmul rate, and where a step's time goes (a profile)."""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from models.registry import resolve

from ..train.bench import OursLoop, bench, images_per_second
from ..train.config import TrainConfig
from ..train.execution import runtime
from ..train.trainer import Run
from .context import TINY, Check, Doctor

PROFILE_GROUPS = (  # op-name fragments -> where step time goes (first match; the rest is "other")
                  ("convolution", ("conv", "cudnn")), ("batch norm", ("batch_norm",)),
                  ("relu", ("relu", "threshold")), ("optimizer", ("_foreach", "sgd", "zero_")),
                  ("loss", ("cross_entropy", "nll_loss", "log_softmax")),
                  ("data (index, augment, normalise)",
     ("index", "randint", "randperm", "addcmul", "pad", "where", "flip")),
                  )


def check_bench(d: Doctor) -> Check:
    quick = d.opts.quick and d.device.type == "cpu"
    arch = TINY if quick else resolve("resnet20")
    r = bench(arch, d.data, device=d.device, batch_size=d.batch(), steps=d.steps(),
              repeats=2 if d.opts.quick else 5, warmup_steps=1 if quick else 3, utilization=True)
    value = (f"{'resnet8' if quick else 'resnet20'}: {r['ratio']:.2f}x ({r['median']['ours']:.0f} vs "
             f"{r['median']['conventional']:.0f} images/s, {r['workers']} loader workers); "
             f"{100 * r['utilization']['ours']:.1f}% of the {r['matmul']['dtype']} matmul rate")
    return d.add("throughput", "bench: ours vs conventional", "info", value, **r)


def check_images_per_second(d: Doctor, name: str) -> Check:
    cfg = TrainConfig(batch_size=d.batch(), device=str(d.device))
    r = images_per_second(resolve(name), d.data, cfg, d.device, steps=d.steps(),
                          repeats=2 if d.opts.quick else 3, warmup_steps=1 if d.opts.quick else 3)
    return d.add("throughput", f"{name} images/s", "info",
                 f"{r['images_per_second']:.0f} images/s (batch {cfg.batch_size}, eager)", **r)


def check_profile(d: Doctor) -> Check:
    """Where a training step's time goes, by op group (self time, CPU or device)."""

    cfg = TrainConfig(iterations=10**9, batch_size=d.batch(), device=str(d.device), probe=False)
    arch = TINY if d.opts.quick else resolve("resnet20")
    with runtime(cfg, d.device):
        run = Run(arch, cfg, d.data, d.device, None, None, None)
        loop = OursLoop(run, run.net)
        loop(2)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if d.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            loop(2 if d.opts.quick else 5)
            if d.device.type == "cuda":
                torch.cuda.synchronize()
    groups: dict[str, float] = {}
    for e in prof.key_averages():
        t = _self_time(e, d.device.type)
        if t <= 0:
            continue
        name = e.key.lower()
        group = next((g for g, frags in PROFILE_GROUPS if any(f in name for f in frags)), "other")
        groups[group] = groups.get(group, 0.0) + t
    total = sum(groups.values()) or 1.0
    shares = {g: t / total for g, t in sorted(groups.items(), key=lambda kv: -kv[1])}
    top = ", ".join(f"{g} {100 * v:.0f}%" for g, v in list(shares.items())[:4])
    return d.add("throughput", "profile", "info", f"{'device' if d.device.type == 'cuda' else 'CPU'} "
                 f"self time: {top}", shares=shares, model="resnet8" if d.opts.quick else "resnet20")

# -- several nets --


def _self_time(event, device_type: str) -> float:
    """An event's self time on the device (CUDA) or the CPU; attribute names vary by torch version."""
    if device_type == "cuda":
        for attr in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(event, attr):
                return float(getattr(event, attr))
        return 0.0
    return float(event.self_cpu_time_total)


# -- several processes on one device -------------------------------------------------------------
