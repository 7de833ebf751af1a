"""Throughput measurements: the trainer's own steps against a conventional loop, and against the
machine's dense matmul rate. Used by `ablate bench` and `ablate doctor`; returns numbers, prints
nothing.

ours          the trainer's `Run.steps()` (runners/train/trainer.py), driven directly: uint8
              dataset on the device, batched pad-crop-flip, randperm slices, channels_last,
              the run's precision (fp32 by default; bf16 autocast with an fp32 head when asked),
              multi-tensor SGD, the trainer's bookkeeping.
conventional  what most CIFAR scripts do: a torch DataLoader over a dataset of PIL images (as
              torchvision's CIFAR10: a uint8 array, one PIL image per __getitem__) with
              torchvision's per-image RandomCrop(32, 4), RandomHorizontalFlip, ToTensor and
              Normalize, feeding an eager NCHW fp32 model and torch.optim.SGD with its defaults.
matmul        (with `utilization`) square dense matmuls in the training's compute dtype (bf16
              under autocast, else fp32): the machine's own practical peak, measured in the
              same run.

Same process, architecture, initial weights, images and batch size. The loops alternate
(A B A B ...) after an untimed warm-up and medians are compared, so drift on a shared machine
hits both alike. The DataLoader's iterator is restarted before each conventional repeat and its
prefetched batches are consumed untimed (its workers are shut down while the other loops run),
so neither loop is timed on batches the other's time paid for.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import statistics
import time

import torch

from models.spec import ArchSpec

from .config import DataConfig, TrainConfig
from .data import Dataset, load_dataset
from .execution import resolve_device, runtime, sync
from .packed import Stack, pack_net, packed_loss, stacked
from .trainer import Run, Tally

PREFETCH = 2  # the DataLoader's prefetch_factor: batches queued per worker


def default_steps(device: torch.device) -> int:
    """Timed steps per repeat: 10 on CPU (~2 s a repeat); 100 on CUDA, where 10 last milliseconds."""
    return 100 if device.type == "cuda" else 10


def default_workers(device: torch.device) -> int:
    """The conventional loop's DataLoader workers: min(8, cores) beside a GPU (else it is PIL-bound
    and the comparison flatters us); none on CPU, where each worker takes a core from the model."""
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


class PILImages(torch.utils.data.Dataset):
    """torchvision's CIFAR10 access pattern: a (N, H, W, 3) uint8 array, a PIL image per item."""

    def __init__(self, images_hwc, labels, transform) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class OursLoop:
    """The trainer's steps, continuing through epochs (the next epoch's batches at each end)."""

    def __init__(self, run: Run, forward: torch.nn.Module) -> None:
        self.run, self.forward = run, forward
        self.epoch, self.pos, self.tally = 1, 0, Tally.zeros(run.device)
        self.batches = run.batches(self.epoch)
        run.net.train()

    def __call__(self, steps: int) -> None:
        spe = self.run.plan.steps_per_epoch
        while steps > 0:
            if self.pos == spe:
                self.epoch, self.pos = self.epoch + 1, 0
                self.batches = self.run.batches(self.epoch)
            k = min(steps, spe - self.pos)
            self.run.steps(self.forward, self.batches, k, self.tally)
            self.pos, steps = self.pos + k, steps - k


class ConventionalLoop:
    def __init__(self, run: Run, workers: int) -> None:
        import torchvision.transforms as T
        data, device = run.data, run.device
        self.device, self.workers = device, workers
        self.model = type(run.model)(run.arch, num_classes=data.num_classes)
        self.model.load_state_dict(run.model.state_dict())  # the same initial weights
        self.model.to(device).train()
        cfg = run.cfg
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)  # the usual call: torch's defaults
        mean = data.train.images.float().mean((0, 2, 3)).div(255).tolist()
        std = data.train.images.float().std((0, 2, 3)).div(255).tolist()
        transform = T.Compose([T.RandomCrop(data.input_size, padding=4), T.RandomHorizontalFlip(),
                               T.ToTensor(), T.Normalize(mean, std)])
        pil = PILImages(data.train.images.permute(0, 2, 3, 1).cpu().numpy(), data.train.labels.cpu().numpy(),
                        transform)
        self.loader = torch.utils.data.DataLoader(
            pil, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=workers,
            prefetch_factor=PREFETCH if workers else None, pin_memory=device.type == "cuda")
        self.batches = None

    def restart(self, warmup_steps: int) -> None:
        """A fresh iterator, its prefetched batches consumed: untimed, before each timed repeat."""
        self.batches = iter(self.loader)
        self(max(warmup_steps, PREFETCH * self.workers))

    def stop(self) -> None:
        self.batches = None  # shuts the workers down: they must not prefetch while others are timed

    def __call__(self, steps: int) -> None:
        for _ in range(steps):
            try:
                x, y = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                x, y = next(self.batches)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            out = self.model(x)
            loss = torch.nn.functional.cross_entropy(out, y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            loss.item()  # the usual per-step `running_loss += loss.item()`


class Matmul:
    """Dense square matmuls in `dtype`; __call__(k) runs k of them. 2 n^3 FLOPs each."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.n = 8192 if device.type == "cuda" else 1024
        self.a = torch.randn(self.n, self.n, device=device).to(dtype)
        self.b = torch.randn(self.n, self.n, device=device).to(dtype)
        self.out = torch.empty_like(self.a)

    @property
    def flops(self) -> float:
        return 2.0 * self.n ** 3

    def __call__(self, k: int) -> None:
        for _ in range(k):
            torch.mm(self.a, self.b, out=self.out)


class PackedLoop:
    """K Runs' steps as one packed step (runners/train/packed.py's `Stack`), through epochs."""

    def __init__(self, runs: list[Run]) -> None:
        net = pack_net(runs)
        net.train()
        self.runs, self.stack = runs, Stack(runs, net, packed_loss(net, runs[0].cfg))
        self.batches = [endless(r) for r in runs]
        self.lrs = [r.cfg.lr for r in runs]

    def __call__(self, steps: int) -> None:
        for _ in range(steps):
            self.stack.step(*stacked([next(b) for b in self.batches]), self.lrs)


def endless(run: Run):
    """`run`'s training batches, epoch after epoch."""
    epoch = 1
    while True:
        yield from run.batches(epoch)
        epoch += 1


class SeparateLoops:
    """K Runs stepping one after another, each its own ordinary steps: K runs in one process."""

    def __init__(self, runs: list[Run]) -> None:
        self.loops = [OursLoop(r, r.forward()) for r in runs]

    def __call__(self, steps: int) -> None:
        for loop in self.loops:
            loop(steps)


def bench_packed(arch: ArchSpec, data: Dataset, *, device: torch.device, packs: tuple[int, ...] = (1, 2, 4),
                 batch_size: int = 128, steps: int | None = None, repeats: int = 5, warmup_steps: int = 3,
                 threads: int | None = None, precision: str = "fp32", compile: bool = False,
                 compile_mode: str = "default", processes: bool = False, data_config: DataConfig | None = None,
                 deadline: float | None = None) -> dict:
    """Aggregate images/s (all K models' images) of K models packed into one step and of the same
    K models trained separately (one after another, in this process), for each K in `packs`;
    medians of repeats that alternate packed and separate, K after K, so drift hits all alike.
    With `processes`, also K separate processes training at once on the device (`processes_at_once`,
    the alternative a GPU user has: `--workers-per-gpu K`), which needs `data_config` to load the
    data in each. A K that runs out of device memory is recorded as such and no larger K is tried;
    none is started after `deadline` (time.monotonic()). `compile` compiles the packed step's
    vmapped forward (runners/train/packed.py `packed_loss`) and each separate run's."""
    steps = steps or default_steps(device)
    cfg = TrainConfig(iterations=10**9, batch_size=batch_size, device=str(device), threads=threads,
                      schedule="constant", probe=False, precision=precision, compile=compile,
                      compile_mode=compile_mode).validate()
    rows = []
    with runtime(cfg, device):
        threads_used = torch.get_num_threads()
        for k in sorted(packs):
            if deadline is not None and time.monotonic() > deadline:
                rows.append({"k": k, "skipped": "time budget spent"})
                continue
            try:
                rows.append(_bench_pack(arch, data, cfg, device, k, steps, repeats, warmup_steps))
            except torch.OutOfMemoryError as e:
                rows.append({"k": k, "out_of_memory": str(e).splitlines()[0][:200]})
                break
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if processes:
                try:
                    r = processes_at_once(k, arch, data_config, str(device), steps, batch_size,
                                          threads=max(1, (os.cpu_count() or 1) // k), precision=precision)
                except RuntimeError as e:  # a child out of memory: the pack's rows so far are kept
                    rows[-1]["processes_error"] = str(e).splitlines()[0][:200]
                    processes = False
                    continue
                rows[-1]["processes"] = r["images_per_second"]
                rows[-1]["processes_per_process"] = r["per_process"]
    for row in rows:
        if "packed" in row:
            rival = max(row["separate"], row.get("processes", 0.0))
            row["ratio"] = row["packed"] / row["separate"]
            row["ratio_to_best_separate"] = row["packed"] / rival
    return {"model": arch.as_dict(), "dataset": data.name, "train_images": len(data.train), "batch_size": batch_size,
            "device": str(device), "device_name": device_name(device), "threads": threads_used,
            "cpus": os.cpu_count(), "steps": steps, "repeats": repeats, "warmup_steps": warmup_steps,
            "precision": precision, "compile": compile, "compile_mode": compile_mode if compile else None,
            "torch": torch.__version__, "packs": rows, "recommended": recommend(rows)}


def _bench_pack(arch, data, cfg, device, k, steps, repeats, warmup_steps) -> dict:
    """One K: packed and separate, alternating repeats, after an untimed warm-up of each."""
    runs = [Run(arch, dataclasses.replace(cfg, seed=s), data, device, None, None, None) for s in range(k)]
    loops = {"packed": PackedLoop(runs),
             "separate": SeparateLoops([Run(arch, dataclasses.replace(cfg, seed=s), data, device, None, None, None)
                                        for s in range(k)])}
    for fn in loops.values():
        fn(max(warmup_steps, 1))  # untimed (compilation included)
    rates: dict = {kind: [] for kind in loops}
    for _ in range(repeats):
        for kind, fn in loops.items():
            rates[kind].append(k * steps * cfg.batch_size / timed(fn, steps, device))
    return {"k": k, "packed": statistics.median(rates["packed"]), "separate": statistics.median(rates["separate"]),
            "packed_repeats": rates["packed"], "separate_repeats": rates["separate"]}


def device_name(device: torch.device) -> str:
    """What a measurement was taken on: the GPU's name, or "cpu (N cores)"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def recommend(rows: list[dict]) -> int:
    """The K to pack with: the smallest whose aggregate rate is within 5% of the best measured
    (a larger K costs memory and coarsens scheduling for no gain), and 1 unless packing beats
    K separate runs (in one process, or K processes where measured) by more than 5%."""
    rows = [r for r in rows if "packed" in r]
    if not rows:
        return 1
    best = max(r["packed"] for r in rows)
    for r in sorted(rows, key=lambda r: r["k"]):
        if r["packed"] >= 0.95 * best:
            return r["k"] if r["k"] == 1 or r["ratio_to_best_separate"] > 1.05 else 1
    return 1


def processes_at_once(k: int, arch: ArchSpec, data: DataConfig | None, device: str, steps: int, batch: int,
                      threads: int, precision: str = "fp32") -> dict:
    """Aggregate images/s of k processes each training `arch` on `device`, timed from a common
    start (a barrier after each has loaded its data and warmed up) to the last one's end."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    barrier, queue = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(arch, data, device, steps, batch, threads, precision,
                                                        barrier, queue))
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


def _process_worker(arch, data, device, steps, batch, threads, precision, barrier, queue) -> None:
    try:
        dev = resolve_device(device)
        cfg = data or DataConfig("synthetic", val_size=0, subset=10_000)
        dataset: Dataset = load_dataset(cfg, dev)
        tcfg = TrainConfig(iterations=10**9, batch_size=batch, device=device, threads=threads, probe=False,
                           precision=precision)
        with runtime(tcfg, dev):
            run = Run(arch, tcfg, dataset, dev, None, None, None)
            loop = OursLoop(run, run.net)
            loop(3)
            sync(dev)
            barrier.wait(timeout=600)
            start = time.time()
            loop(steps)
            sync(dev)
            end = time.time()
        queue.put({"start": start, "end": end, "rate": steps * batch / (end - start)})
    except Exception as e:  # noqa: BLE001 - reported by the parent as the measurement's failure
        queue.put({"error": f"{type(e).__name__}: {e}"})
        try:
            barrier.abort()
        except Exception:  # noqa: BLE001
            pass


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds for fn(steps), the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn(steps)
    sync(device)
    return time.perf_counter() - start


def bench(arch: ArchSpec, data: Dataset, *, device: torch.device, batch_size: int = 128,
          steps: int | None = None, repeats: int = 5, warmup_steps: int = 3, workers: int | None = None,
          threads: int | None = None, compile: bool = False, conventional: bool = True,
          utilization: bool = False, precision: str = "fp32") -> dict:
    """Images/s of ours and the conventional loop (medians of alternating repeats), their ratio,
    and with `utilization` the training FLOP/s (6 x MACs per image x images/s: forward 2, backward
    4) as a fraction of the matmul FLOP/s measured between them."""
    steps = steps or default_steps(device)
    workers = default_workers(device) if workers is None else workers
    cfg = TrainConfig(iterations=10**9, batch_size=batch_size, device=str(device), threads=threads,
                      compile=compile, schedule="constant", probe=False, precision=precision).validate()
    with runtime(cfg, device):
        run = Run(arch, cfg, data, device, None, None, None)
        loops = {"ours": OursLoop(run, run.forward())}
        conv = ConventionalLoop(run, workers) if conventional else None
        if conv is not None:
            loops["conventional"] = conv
        matmul = None
        if utilization:
            matmul = Matmul(device, torch.bfloat16 if run.amp else torch.float32)
            # as many matmuls as take about one ours-repeat, so both are timed over similar spans
            probe = timed(matmul, 2, device) / 2
            loops["matmul"] = matmul
        loops["ours"](max(warmup_steps, 1))  # warm-up (and compilation) untimed
        ours_step = timed(loops["ours"], 1, device)
        units = {"ours": steps, "conventional": steps}
        if matmul is not None:
            units["matmul"] = max(1, round(steps * ours_step / max(probe, 1e-6)))
        rates: dict[str, list[float]] = {k: [] for k in loops}
        for _ in range(repeats):
            for key, fn in loops.items():
                if key == "conventional":
                    conv.restart(warmup_steps)
                seconds = timed(fn, units[key], device)
                if key == "conventional":
                    conv.stop()
                rates[key].append(units[key] * (matmul.flops if key == "matmul" else batch_size) / seconds)
        threads_used = torch.get_num_threads()
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {"model": arch.as_dict(), "dataset": data.name, "train_images": len(data.train),
           "batch_size": batch_size, "device": str(device), "threads": threads_used, "cpus": os.cpu_count(),
           "workers": workers, "steps": steps, "repeats": repeats, "warmup_steps": warmup_steps,
           "amp": run.amp, "precision": run.precision, "channels_last": cfg.channels_last, "compile": compile,
           "torch": torch.__version__, "rates": rates, "median": med}
    if conv is not None:
        out["ratio"] = med["ours"] / med["conventional"]
    if matmul is not None:
        macs = run.complexity.macs
        out["matmul"] = {"n": matmul.n, "dtype": str(matmul.a.dtype).removeprefix("torch."),
                         "flops_per_s": med.pop("matmul")}
        rates_mm = rates.pop("matmul")
        out["matmul"]["repeats"] = rates_mm
        out["macs_per_image"] = macs
        out["training_flops_per_s"] = {k: 6 * macs * v for k, v in med.items()}
        out["utilization"] = {k: 6 * macs * v / out["matmul"]["flops_per_s"] for k, v in med.items()}
    return out


def images_per_second(arch: ArchSpec, data: Dataset, cfg: TrainConfig, device: torch.device, *,
                      steps: int, repeats: int = 3, warmup_steps: int = 3) -> dict:
    """The trainer's steps alone for `cfg` (compile and its mode included): median images/s and
    the untimed warm-up's seconds (compilation, CUDA graph capture)."""
    cfg = dataclasses.replace(cfg, iterations=10**9, epochs=None, probe=False).validate()
    with runtime(cfg, device):
        run = Run(arch, cfg, data, device, None, None, None)
        loop = OursLoop(run, run.forward())
        warm = timed(loop, max(warmup_steps, 1), device)
        rates = [steps * cfg.batch_size / timed(loop, steps, device) for _ in range(repeats)]
    return {"images_per_second": statistics.median(rates), "repeats": rates, "warmup_seconds": warm,
            "macs_per_image": run.complexity.macs}
