"""Several nets on one device: compile modes (eager, compile, CUDA graphs), the aggregate
images/s of 1, 2, 4, 8 worker processes, and K models packed into one step beside K separate
runs and K processes (`ablate bench --pack`'s measurement), with the best settings recommended
for `ablate run`."""
from __future__ import annotations

import os
import time

from models.registry import resolve

from ..train import rates
from ..train.bench import bench_packed, images_per_second, processes_at_once
from ..train.config import DataConfig, TrainConfig
from .context import Check, Doctor
from .environment import compile_support

NETS = (1, 2, 4, 8)  # processes trained at once on one device
PACKS = (1, 2, 4, 8, 16)  # pack sizes measured on a GPU
# (model, bn_batch, batch): as the paper specs train them (He 2016a/b: BN over each of 2 GPUs'
# share; Table 4's 1001 at the resnet-1k-layers recipe's batch 64), so their estimates read
# "measured" (runners/study/estimate.py)
PACKED_MODELS = (("resnet20", 64, 128), ("resnet110", 64, 128), ("preact-resnet1001", 32, 64))
TIE = 1.05  # a larger setting must beat a smaller one by 5% to be recommended


def check_compile_modes(d: Doctor) -> Check:
    if compile_support():
        return d.add("several nets", "compile modes", "skip", compile_support())
    if d.opts.quick and d.device.type == "cpu":
        return d.add("several nets", "compile modes", "skip", "--quick on CPU: compiling takes minutes here")
    modes = [("eager", False, "default"), ("compile", True, "default")]
    if d.device.type == "cuda":
        modes.append(("compile reduce-overhead (CUDA graphs)", True, "reduce-overhead"))
    rates = {}
    for label, on, mode in modes:
        if d.elapsed() > d.opts.budget_s:
            break
        cfg = TrainConfig(batch_size=d.batch(), device=str(d.device), compile=on, compile_mode=mode)
        r = images_per_second(resolve("resnet20"), d.data, cfg, d.device, steps=d.steps(), repeats=3)
        rates[label] = {"images_per_second": r["images_per_second"], "warmup_seconds": r["warmup_seconds"],
                        "compile": on, "compile_mode": mode}
    best = max(rates, key=lambda k: rates[k]["images_per_second"])
    if rates[best]["images_per_second"] < TIE * rates["eager"]["images_per_second"]:
        best = "eager"
    d.recommendation["compile"] = rates[best]["compile"]
    d.recommendation["compile_mode"] = rates[best]["compile_mode"]
    value = ", ".join(f"{k} {v['images_per_second']:.0f}" for k, v in rates.items()) + f" images/s; best: {best}"
    return d.add("several nets", "compile modes", "info", value, resnet20=rates, best=best)


def check_nets_at_once(d: Doctor) -> Check:
    if d.opts.quick and d.device.type == "cpu":
        return d.add("several nets", "nets at once", "skip",
                     "--quick on CPU: the processes would only share the same cores")
    counts = NETS if d.device.type == "cuda" else (1, 2)
    cores = os.cpu_count() or 1
    results = {}
    for k in counts:
        if d.elapsed() > d.opts.budget_s:
            break
        results[k] = processes_at_once(k, resolve("resnet20"), data_config(d), str(d.device), d.steps(), d.batch(),
                                       threads=max(1, cores // k))
    base = results[1]["images_per_second"]
    best = 1
    for k in sorted(results):
        if results[k]["images_per_second"] >= TIE * results[best]["images_per_second"]:
            best = k
    d.recommendation["workers_per_gpu" if d.device.type == "cuda" else "workers"] = best
    value = ", ".join(f"{k}: {v['images_per_second']:.0f}" for k, v in results.items())
    return d.add("several nets", "nets at once", "info",
                 f"aggregate images/s (resnet20) {value}; best {best} "
                 f"({results[best]['images_per_second'] / base:.2f}x one)",
                 results={str(k): v for k, v in results.items()}, best=best)


def data_config(d: Doctor) -> DataConfig | None:
    """What each spawned process loads: the doctor's --data, else (None) synthetic."""
    return DataConfig(d.opts.data, val_size=0) if d.opts.data else None


def check_packing(d: Doctor) -> Check:
    """K models packed into one step (runners/train/packed.py) beside K separate runs in one
    process and K processes at once, for ResNet-20, 110 and preact-1001 on a GPU (ResNet-20 and
    K 1, 2 on a CPU), eager, each as the paper specs train it (PACKED_MODELS); then ResNet-20's
    recommended K compiled (default and CUDA graphs) where the budget leaves time. Steps shrink
    with depth (a 1001-layer step is 50 times a 20-layer one). Each measurement is recorded in
    results/rates.json and kept in the row's details, where `ablate run --dry-run --rates` reads it."""
    if d.opts.quick and d.device.type == "cpu":
        return d.add("several nets", "packed", "skip", "--quick on CPU: packing measured slower on CPUs (README)")
    cuda = d.device.type == "cuda"
    models, packs = (PACKED_MODELS, PACKS) if cuda else (PACKED_MODELS[:1], (1, 2))
    deadline = time.monotonic() + d.opts.budget_s - d.elapsed()
    measurements, summary = [], []
    for name, bn_batch, batch in models:
        if time.monotonic() > deadline:
            summary.append(f"{name}: time budget spent")
            continue
        arch = resolve(name).replace(bn_batch=bn_batch)
        try:
            r = bench_packed(arch, d.data, device=d.device, packs=packs, batch_size=min(batch, d.batch()),
                             steps=max(2, d.steps() * 20 // arch.total_depth), repeats=2 if cuda else 1,
                             warmup_steps=2, processes=cuda, data_config=data_config(d), deadline=deadline)
        except Exception as e:  # noqa: BLE001 - one model's failure must not lose the others' rates
            summary.append(f"{name}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}")
            continue
        r["model_name"] = f"{name} bn{bn_batch}"
        measurements.append(r)
        summary.append(f"{name}: " + " ".join(f"K{row['k']} {row['ratio_to_best_separate']:.2f}x"
                                              for row in r["packs"] if "packed" in row) + f" -> {r['recommended']}")
    name, bn_batch, batch = PACKED_MODELS[0]
    first = [m for m in measurements if m["model_name"] == f"{name} bn{bn_batch}"]
    if first and cuda:
        k = first[0]["recommended"]
        for mode in ("default", "reduce-overhead"):
            if time.monotonic() > deadline:
                break
            try:
                r = bench_packed(resolve(name).replace(bn_batch=bn_batch), d.data, device=d.device, packs=(k,),
                                 batch_size=min(batch, d.batch()),
                                 steps=d.steps(), repeats=2, warmup_steps=3, compile=True, compile_mode=mode,
                                 deadline=deadline)
            except Exception as e:  # noqa: BLE001 - a mode that does not work with the packed step is a finding
                summary.append(f"resnet20 K{k} compile {mode}: {type(e).__name__}")
                continue
            r["model_name"] = f"{name} bn{bn_batch}"
            measurements.append(r)
            rows = [row for row in r["packs"] if "packed" in row]
            if rows:
                summary.append(f"resnet20 K{k} compile {mode}: {rows[0]['packed']:.0f} images/s")
    if not measurements:
        return d.add("several nets", "packed", "skip", "; ".join(summary) or "nothing measured")
    recorded = rates.record(measurements)
    d.recommendation["pack"] = (first or measurements)[0]["recommended"]
    return d.add("several nets", "packed", "info", "packed / best separate: " + "; ".join(summary),
                 measurements=measurements, recorded=str(recorded))
