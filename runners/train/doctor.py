"""`ablate doctor`'s checks: what this machine runs, whether the trainer's CUDA path works end to
end, whether bf16 and fp32 training agree, how fast it trains, and how many nets one device should
train at once. Returns results; `runners/commands/doctor.py` prints them and writes the JSON.

Needs only torch, torchvision, numpy and Pillow (no Optuna, MLflow or tqdm: it is meant to run
on a bare GPU machine from a checkout). Every check is a row (section, name, status, value,
details); status is ok, fail, skip (with the reason) or info (a measurement). A check that raises
is a fail row with the error, and the others still run. Measurements stop being started once the
time budget is spent (the rest are skip rows that say so).

Sections: environment; cuda path (bf16 autocast, channels_last, compile, deterministic mode with a
bit-exact resume, resume across device types, divergence detection); agreement (fp32 vs bf16 runs
of the same short training); throughput (the bench's ours/conventional ratio, images/s of
ResNet-20/56/110, training FLOP/s against the same run's matmul rate, a profile of where step time
goes); several nets (aggregate images/s of 1, 2, 4, 8 worker processes on the one device, and
compile modes incl. CUDA graphs); data (the --data ImageFolder subset, else synthetic).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import multiprocessing as mp
import os
import platform
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field

import torch

from models.registry import resolve
from models.spec import ArchSpec

from .config import DataConfig, TrainConfig
from .data import Dataset, load_dataset

TINY = ArchSpec(depth=8)  # 3 stages of one basic block: trains in seconds on a CPU
# fp32 vs bf16: the same 3-epoch training's final training loss may differ by this much (absolute,
# nats) and its test error by AGREE_ERROR; bf16 rounding changes the trajectory, not the level.
AGREE_LOSS, AGREE_ERROR = 0.15, 0.10
NETS = (1, 2, 4, 8)  # processes trained at once on one device
TIE = 1.05  # a larger setting must beat a smaller one by 5% to be recommended
PROFILE_GROUPS = (  # op-name fragments -> where step time goes (first match; the rest is "other")
    ("convolution", ("conv", "cudnn")), ("batch norm", ("batch_norm",)),
    ("relu", ("relu", "threshold")), ("optimizer", ("_foreach", "sgd", "zero_")),
    ("loss", ("cross_entropy", "nll_loss", "log_softmax")),
    ("data (index, augment, normalise)", ("index", "randint", "randperm", "addcmul", "pad", "where", "flip")),
)


@dataclass
class Check:
    section: str
    name: str
    status: str  # ok | fail | skip | info
    value: str  # one short line for the table
    details: dict = field(default_factory=dict)


@dataclass
class Options:
    device: str = "auto"
    quick: bool = False
    data: str | None = None  # an ImageFolder root (train/, test/), else synthetic
    budget_s: float = 420.0  # no measurement starts after this many seconds (the run must fit 8 min)


class Doctor:
    """Runs the sections in order; `checks` accumulates the rows."""

    def __init__(self, opts: Options, on_check=None) -> None:
        self.opts, self.checks, self.start = opts, [], time.perf_counter()
        self.recommendation: dict = {}
        self.on_check = on_check  # called with the report so far after each check (partial results)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def add(self, section, name, status, value, **details) -> Check:
        c = Check(section, name, status, value, details)
        self.checks.append(c)
        return c

    def guarded(self, section: str, name: str, fn, *, measurement: bool = True):
        """Run one check; an exception becomes a fail row, a spent budget a skip row."""
        if measurement and self.elapsed() > self.opts.budget_s:
            return self.add(section, name, "skip", f"time budget ({self.opts.budget_s:.0f} s) spent")
        t = time.perf_counter()
        try:
            check = fn()
        except Exception as e:  # noqa: BLE001 - one failing check must not hide the others
            first = (str(e).strip().splitlines() or [""])[0][:160]
            check = self.add(section, name, "fail", f"{type(e).__name__}: {first}",
                             traceback=traceback.format_exc(limit=6))
        if check is not None:
            check.details["seconds"] = round(time.perf_counter() - t, 2)
        if self.on_check is not None:
            self.on_check(self.report())
        return check

    # -- the run --
    def run(self) -> dict:
        from .trainer import resolve_device
        self.environment()
        self.device = resolve_device(self.opts.device)
        self.guarded("data", "dataset", self.load_data, measurement=False)
        if not hasattr(self, "data"):
            return self.report()
        self.guarded("cuda path", "train (autocast, channels_last)", self.check_training)
        self.guarded("cuda path", "compile", self.check_compile)
        self.guarded("cuda path", "deterministic resume", self.check_resume)
        self.guarded("cuda path", "resume across device types", self.check_cross_device)
        self.guarded("cuda path", "divergence detection", self.check_divergence)
        self.guarded("agreement", "fp32 vs bf16", self.check_agreement)
        self.guarded("throughput", "bench: ours vs conventional", self.check_bench)
        for name in self.throughput_models():
            self.guarded("throughput", f"{name} images/s", lambda n=name: self.check_images_per_second(n))
        self.guarded("throughput", "profile", self.check_profile)
        self.guarded("several nets", "compile modes", self.check_compile_modes)
        self.guarded("several nets", "nets at once", self.check_nets_at_once)
        return self.report()

    def report(self) -> dict:
        statuses = [c.status for c in self.checks]
        return {"device": str(getattr(self, "device", self.opts.device)), "quick": self.opts.quick,
                "data": self.opts.data, "seconds": round(self.elapsed(), 1),
                "ok": "fail" not in statuses, "counts": {s: statuses.count(s) for s in ("ok", "fail", "skip", "info")},
                "recommendation": self.recommendation, "checks": [dataclasses.asdict(c) for c in self.checks]}

    # -- environment --
    def environment(self) -> None:
        s = "environment"
        self.add(s, "python", "info", platform.python_version())
        self.add(s, "torch", "info", torch.__version__, cuda_build=torch.version.cuda)
        cuda = torch.cuda.is_available()
        if not cuda:
            self.add(s, "CUDA", "skip" if self.opts.device in ("auto", "cpu") else "fail",
                     "not available" + (f" (torch built for CUDA {torch.version.cuda})" if torch.version.cuda else ""))
        else:
            props = torch.cuda.get_device_properties(0)
            cap = torch.cuda.get_device_capability(0)
            self.add(s, "CUDA", "ok", f"{torch.version.cuda}, {torch.cuda.device_count()} device(s)")
            self.add(s, "cuDNN", "ok" if torch.backends.cudnn.is_available() else "fail",
                     str(torch.backends.cudnn.version()))
            self.add(s, "GPU", "info", f"{props.name}, sm_{cap[0]}{cap[1]}, {props.total_memory / 2**30:.0f} GiB",
                     name=props.name, capability=list(cap), memory_bytes=props.total_memory,
                     multiprocessors=props.multi_processor_count)
            bf16 = torch.cuda.is_bf16_supported()
            self.add(s, "bf16", "ok" if bf16 else "skip", "supported" if bf16 else "not supported: amp stays off")
            self.add(s, "TF32", "info", f"{'available' if cap[0] >= 8 else 'not available'} (matmul allowed: "
                     f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN allowed: {torch.backends.cudnn.allow_tf32})")
        compiler = self.compile_support()
        self.add(s, "torch.compile", "ok" if compiler is None else "skip", compiler or "available")
        self.add(s, "cpu", "info", f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
        for module, needs in (("optuna", "ablate run/worker/status (studies)"),
                              ("mlflow", "ablate train/run logging and ablate figures")):
            found = importlib.util.find_spec(module) is not None  # found, not imported
            self.add(s, module, "ok" if found else "skip",
                     "installed (not imported here)" if found else f"absent: skipped what needs it ({needs})")

    def compile_support(self) -> str | None:
        """None if torch.compile (inductor) can work here, else why not."""
        if not hasattr(torch, "compile"):
            return "torch.compile missing"
        if torch.cuda.is_available() and importlib.util.find_spec("triton") is None:
            return "triton missing (inductor's CUDA code generator)"
        if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
            return "no C++ compiler on PATH (inductor needs one)"
        return None

    # -- data --
    def load_data(self) -> None:
        quick, cpu = self.opts.quick, self.device.type == "cpu"
        name = self.opts.data or "synthetic"
        t = time.perf_counter()
        if self.opts.data is None:
            full = DataConfig("synthetic", val_size=0, subset=2_000 if quick else 10_000)
        else:
            full = DataConfig(name, val_size=0)
        self.data = load_dataset(full, self.device)  # the throughput sections' data
        # the training checks' data: small enough for seconds per epoch on a CPU
        n = 300 if quick else 600 if cpu else min(5_000, len(self.data.train))
        self.small_cfg = DataConfig(name, val_size=100, subset=n)
        self.small = load_dataset(self.small_cfg, self.device)
        return self.add("data", "dataset", "ok", f"{self.data.summary()} ({time.perf_counter() - t:.1f} s)",
                 dataset=self.data.name, train=len(self.data.train), test=len(self.data.test),
                 source="imagefolder" if self.opts.data else "synthetic")

    def recipe(self, **kw) -> TrainConfig:
        batch = 32 if len(self.small.train) < 2_000 else 128
        base = dict(epochs=2, batch_size=batch, schedule="constant", device=str(self.device), probe=False)
        return TrainConfig(**{**base, **kw}).validate()

    # -- the CUDA path --
    def check_training(self) -> Check:
        from .trainer import train, use_amp
        cfg = self.recipe(epochs=2 if self.opts.quick else 3)
        r = train(TINY, cfg, self.small)
        h = r.history
        learned = r.status == "finished" and h[-1]["train_loss"] < h[0]["train_loss"]
        return self.add("cuda path", "train (autocast, channels_last)", "ok" if learned else "fail",
                        f"{r.status}, train loss {h[0]['train_loss']:.3f} -> {h[-1]['train_loss']:.3f}, "
                        f"bf16 {'on' if use_amp(cfg, self.device) else 'off'}, channels_last",
                        history=h)

    def check_compile(self) -> Check:
        from .trainer import train
        why = self.compile_support()
        if why:
            return self.add("cuda path", "compile", "skip", why)
        if self.opts.quick and self.device.type == "cpu":
            return self.add("cuda path", "compile", "skip", "--quick on CPU: compiling takes minutes here")
        eager = train(TINY, self.recipe(epochs=1), self.small).final
        t = time.perf_counter()
        compiled = train(TINY, self.recipe(epochs=1, compile=True), self.small).final
        seconds = time.perf_counter() - t
        close = abs(compiled["train_loss"] - eager["train_loss"]) < AGREE_LOSS
        return self.add("cuda path", "compile", "ok" if close else "fail",
                        f"train loss {compiled['train_loss']:.3f} (eager {eager['train_loss']:.3f}), {seconds:.0f} s "
                        "incl. compilation", eager=eager, compiled=compiled)

    def check_resume(self) -> Check:
        from .trainer import train

        class Stop(Exception):
            pass

        def stop(epoch, metrics):
            raise Stop
        cfg = self.recipe(epochs=2, deterministic=True)
        whole = train(TINY, cfg, self.small)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                train(TINY, cfg, self.small, checkpoint_dir=tmp, on_epoch=stop)
            except Stop:
                pass
            resumed = train(TINY, cfg, self.small, checkpoint_dir=tmp)
        keys = ("train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error")
        a = [[m[k] for k in keys] for m in whole.history]
        b = [[m[k] for k in keys] for m in resumed.history]
        return self.add("cuda path", "deterministic resume", "ok" if a == b else "fail",
                        "bit-exact" if a == b else "differs from the uninterrupted run", whole=a, resumed=b)

    def check_cross_device(self) -> Check:
        """Epoch 1 on the CPU, resumed on the device: the generator is reseeded, not crashed."""
        from .trainer import train
        if self.device.type != "cuda":
            return self.add("cuda path", "resume across device types", "skip", "needs a CUDA device "
                            "(tests/test_cuda_path.py covers the CPU side)")

        class Stop(Exception):
            pass

        def stop(epoch, metrics):
            raise Stop
        with tempfile.TemporaryDirectory() as tmp:
            try:
                train(TINY, dataclasses.replace(self.recipe(), device="cpu"), self.small.to("cpu"),
                      checkpoint_dir=tmp, on_epoch=stop)
            except Stop:
                pass
            r = train(TINY, self.recipe(), self.small, checkpoint_dir=tmp)
        ok = r.status == "finished" and r.epochs == 2
        return self.add("cuda path", "resume across device types", "ok" if ok else "fail",
                        f"CPU epoch 1 -> {self.device.type} epoch 2: {r.status}")

    def check_divergence(self) -> Check:
        from .trainer import train
        r = train(TINY, self.recipe(epochs=2, lr=1e4), self.small)
        return self.add("cuda path", "divergence detection", "ok" if r.status == "diverged" else "fail",
                        f"lr 1e4: {r.status} after {r.epochs} finite epoch(s)")

    # -- agreement --
    def check_agreement(self) -> Check:
        from .trainer import train
        runs = {amp: train(TINY, self.recipe(epochs=2 if self.opts.quick else 3, amp=amp, deterministic=True), self.small).final
                for amp in ("off", "bf16")}
        dl = abs(runs["off"]["train_loss"] - runs["bf16"]["train_loss"])
        de = abs(runs["off"]["test_error"] - runs["bf16"]["test_error"])
        ok = dl <= AGREE_LOSS and de <= AGREE_ERROR
        return self.add("agreement", "fp32 vs bf16", "ok" if ok else "fail",
                        f"|d train loss| {dl:.3f} (<= {AGREE_LOSS}), |d test error| {de:.3f} (<= {AGREE_ERROR})",
                        fp32=runs["off"], bf16=runs["bf16"], tolerance={"train_loss": AGREE_LOSS,
                                                                        "test_error": AGREE_ERROR})

    # -- throughput --
    def steps(self) -> int:
        if self.device.type == "cuda":
            return 100
        return 2 if self.opts.quick else 10

    def throughput_models(self) -> list[str]:
        return ["resnet20"] if self.opts.quick else ["resnet20", "resnet56", "resnet110"]

    def batch(self) -> int:
        return 128 if len(self.data.train) >= 128 else len(self.data.train)

    def check_bench(self) -> Check:
        from .bench import bench
        quick = self.opts.quick and self.device.type == "cpu"
        arch = TINY if quick else resolve("resnet20")
        r = bench(arch, self.data, device=self.device, batch_size=self.batch(), steps=self.steps(),
                  repeats=2 if self.opts.quick else 5, warmup_steps=1 if quick else 3, utilization=True)
        value = (f"{'resnet8' if quick else 'resnet20'}: {r['ratio']:.2f}x ({r['median']['ours']:.0f} vs "
                 f"{r['median']['conventional']:.0f} images/s, {r['workers']} loader workers); "
                 f"{100 * r['utilization']['ours']:.1f}% of the {r['matmul']['dtype']} matmul rate")
        return self.add("throughput", "bench: ours vs conventional", "info", value, **r)

    def check_images_per_second(self, name: str) -> Check:
        from .bench import images_per_second
        cfg = TrainConfig(batch_size=self.batch(), device=str(self.device))
        r = images_per_second(resolve(name), self.data, cfg, self.device, steps=self.steps(),
                              repeats=2 if self.opts.quick else 3, warmup_steps=1 if self.opts.quick else 3)
        return self.add("throughput", f"{name} images/s", "info",
                        f"{r['images_per_second']:.0f} images/s (batch {cfg.batch_size}, eager)", **r)

    def check_profile(self) -> Check:
        """Where a training step's time goes, by op group (self time, CPU or device)."""
        from torch.profiler import ProfilerActivity, profile

        from .bench import OursLoop
        from .trainer import Run, runtime
        cfg = TrainConfig(iterations=10**9, batch_size=self.batch(), device=str(self.device), probe=False)
        arch = TINY if self.opts.quick else resolve("resnet20")
        with runtime(cfg, self.device):
            run = Run(arch, cfg, self.data, self.device, None, None, None)
            loop = OursLoop(run, run.net)
            loop(2)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                loop(2 if self.opts.quick else 5)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
        groups: dict[str, float] = {}
        for e in prof.key_averages():
            t = _self_time(e, self.device.type)
            if t <= 0:
                continue
            name = e.key.lower()
            group = next((g for g, frags in PROFILE_GROUPS if any(f in name for f in frags)), "other")
            groups[group] = groups.get(group, 0.0) + t
        total = sum(groups.values()) or 1.0
        shares = {g: t / total for g, t in sorted(groups.items(), key=lambda kv: -kv[1])}
        top = ", ".join(f"{g} {100 * v:.0f}%" for g, v in list(shares.items())[:4])
        return self.add("throughput", "profile", "info", f"{'device' if self.device.type == 'cuda' else 'CPU'} "
                        f"self time: {top}", shares=shares, model="resnet8" if self.opts.quick else "resnet20")

    # -- several nets --
    def check_compile_modes(self) -> Check:
        from .bench import images_per_second
        if self.compile_support():
            return self.add("several nets", "compile modes", "skip", self.compile_support())
        if self.opts.quick and self.device.type == "cpu":
            return self.add("several nets", "compile modes", "skip", "--quick on CPU: compiling takes minutes here")
        modes = [("eager", False, "default"), ("compile", True, "default")]
        if self.device.type == "cuda":
            modes.append(("compile reduce-overhead (CUDA graphs)", True, "reduce-overhead"))
        rates = {}
        for label, on, mode in modes:
            if self.elapsed() > self.opts.budget_s:
                break
            cfg = TrainConfig(batch_size=self.batch(), device=str(self.device), compile=on, compile_mode=mode)
            r = images_per_second(resolve("resnet20"), self.data, cfg, self.device, steps=self.steps(), repeats=3)
            rates[label] = {"images_per_second": r["images_per_second"], "warmup_seconds": r["warmup_seconds"],
                            "compile": on, "compile_mode": mode}
        best = max(rates, key=lambda k: rates[k]["images_per_second"])
        if rates[best]["images_per_second"] < TIE * rates["eager"]["images_per_second"]:
            best = "eager"
        self.recommendation["compile"] = rates[best]["compile"]
        self.recommendation["compile_mode"] = rates[best]["compile_mode"]
        value = ", ".join(f"{k} {v['images_per_second']:.0f}" for k, v in rates.items()) + f" images/s; best: {best}"
        return self.add("several nets", "compile modes", "info", value, resnet20=rates, best=best)

    def check_nets_at_once(self) -> Check:
        if self.opts.quick and self.device.type == "cpu":
            return self.add("several nets", "nets at once", "skip",
                            "--quick on CPU: the processes would only share the same cores")
        counts = NETS if self.device.type == "cuda" else (1, 2)
        cores = os.cpu_count() or 1
        results = {}
        for k in counts:
            if self.elapsed() > self.opts.budget_s:
                break
            results[k] = nets_at_once(k, self.opts.data, str(self.device), self.steps(), self.batch(),
                                      threads=max(1, cores // k))
        base = results[1]["images_per_second"]
        best = 1
        for k in sorted(results):
            if results[k]["images_per_second"] >= TIE * results[best]["images_per_second"]:
                best = k
        self.recommendation["workers_per_gpu" if self.device.type == "cuda" else "workers"] = best
        value = ", ".join(f"{k}: {v['images_per_second']:.0f}" for k, v in results.items())
        return self.add("several nets", "nets at once", "info",
                        f"aggregate images/s (resnet20) {value}; best {best} ({results[best]['images_per_second'] / base:.2f}x one)",
                        results={str(k): v for k, v in results.items()}, best=best)


def _self_time(event, device_type: str) -> float:
    """An event's self time on the device (CUDA) or the CPU; attribute names vary by torch version."""
    if device_type == "cuda":
        for attr in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(event, attr):
                return float(getattr(event, attr))
        return 0.0
    return float(event.self_cpu_time_total)


# -- several processes on one device -------------------------------------------------------------
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
        from .bench import OursLoop
        from .trainer import Run, resolve_device, runtime, sync
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


def run_doctor(opts: Options, on_check=None) -> dict:
    """All checks; `on_check(report so far)` after each, so a killed run still leaves its rows."""
    return Doctor(opts, on_check).run()
