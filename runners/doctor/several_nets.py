"""Several nets on one device: compile modes (eager, compile, CUDA graphs) and the aggregate
images/s of 1, 2, 4, 8 worker processes, with the best setting recommended for `ablate run`."""
from __future__ import annotations

import multiprocessing as mp
import os
import time

from models.registry import resolve

from ..train.bench import OursLoop, images_per_second
from ..train.config import DataConfig, TrainConfig
from ..train.data import Dataset, load_dataset
from ..train.execution import resolve_device, runtime, sync
from ..train.trainer import Run
from .context import Check, Doctor
from .environment import compile_support

NETS = (1, 2, 4, 8)  # processes trained at once on one device
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
        results[k] = nets_at_once(k, d.opts.data, str(d.device), d.steps(), d.batch(),
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


def nets_at_once(k: int, data: str | None, device: str, steps: int, batch: int, threads: int) -> dict:
    """Aggregate images/s of k processes each training ResNet-20 on `device`, timed from a common
    start (a barrier after each has loaded its data and warmed up) to the last one's end."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    barrier, queue = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_net_worker, args=(data, device, steps, batch, threads, barrier, queue))
             for _ in range(k)]
    for p in procs:
        p.start()
    try:
        out = [queue.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    errors = [o["error"] for o in out if "error" in o]
    if errors:
        raise RuntimeError(errors[0])
    start, end = min(o["start"] for o in out), max(o["end"] for o in out)
    return {"images_per_second": k * steps * batch / (end - start), "per_process": [o["rate"] for o in out],
            "threads_per_process": threads}


def _net_worker(data: str | None, device: str, steps: int, batch: int, threads: int, barrier, queue) -> None:
    try:
        dev = resolve_device(device)
        cfg = DataConfig(data, val_size=0) if data else DataConfig("synthetic", val_size=0, subset=10_000)
        dataset: Dataset = load_dataset(cfg, dev)
        tcfg = TrainConfig(iterations=10**9, batch_size=batch, device=device, threads=threads, probe=False)
        with runtime(tcfg, dev):
            run = Run(resolve("resnet20"), tcfg, dataset, dev, None, None, None)
            loop = OursLoop(run, run.net)
            loop(3)
            sync(dev)
            barrier.wait(timeout=600)
            start = time.time()
            loop(steps)
            sync(dev)
            end = time.time()
        queue.put({"start": start, "end": end, "rate": steps * batch / (end - start)})
    except Exception as e:  # noqa: BLE001 - reported by the parent as the check's failure
        queue.put({"error": f"{type(e).__name__}: {e}"})
        try:
            barrier.abort()
        except Exception:  # noqa: BLE001
            pass
