"""The trainer: a function of (architecture, recipe, data), with no globals.

    result = train(models.resolve("resnet20"), TrainConfig(epochs=160), DataConfig("cifar10"),
                   tracker=tracker, checkpoint_dir="results/checkpoints/x")

The recipe is He et al. 2016a Sec. 4.2 (see runners/train/config.py). The whole dataset sits on the
training device as uint8 and is augmented there in batches (runners/train/data.py). Every epoch
records the training loss and error as measured on the fly (the augmented batches, in training
mode, as the paper plots them), the validation and test loss and error, the lr, the time and
the throughput; is logged to the tracker (the contract in runners/tracking/runs.py); and is
checkpointed atomically with the model, optimizer, schedule and RNG states, so an interrupted run
resumes exactly (bit-identical on CPU in deterministic mode). The CUDA generators are not saved:
nothing in training draws from them (the data order and augmentation have their own generator,
the initialisation draws on the CPU). A non-finite loss ends the run as
"diverged": a result, not an exception. Selection (`best_val_error`) reads validation only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.network import ResNet
from models.spec import ArchSpec

from ..errors import ConfigError
from ..tracking import runs as tracking
from .config import DataConfig, TrainConfig
from . import distributed
from .data import Dataset, Split, load_dataset
from .stream import StreamDataset, default_workers

_log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1
# Fields that change how a run executes, not what it computes: they may differ on resume and do
# not enter the default checkpoint directory's hash.
RUNTIME_FIELDS = ("device", "threads", "compile", "compile_mode", "eval_batch_size", "probe",
                  "deterministic", "amp", "channels_last", "workers")
WARMUP_EMA = 0.9  # the warm-up watches a running (bias-corrected EMA) training error, ~10 batches
EVAL_BATCH = {"cpu": 250, "cuda": 1000}  # the default eval_batch_size per device type (README)


@dataclass
class TrainResult:
    status: str  # "finished" | "diverged"
    epochs: int  # epochs completed (with finite losses)
    history: list[dict]  # per-epoch metrics, keys as the tracking contract, plus "epoch"
    final: dict  # the last completed epoch's metrics ({} if none)
    best_val_error: float | None  # min validation error over epochs; None without a val split
    responses: list[dict] | None  # [{"index", "layer", "std"}], He 2016a Fig. 7; None if not probed


def resolve_device(name: str) -> torch.device:
    """auto (CUDA if available, else CPU), cpu, cuda or cuda:N; ConfigError if unavailable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name} requested but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return dev


# -- the run's length and lr ----------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """How many steps: the last partial batch of an epoch is dropped (batches are randperm
    slices, so every image is seen over the epochs); an iteration-length run ends mid-epoch."""

    steps_per_epoch: int
    epochs: int
    iterations: int

    @classmethod
    def of(cls, cfg: TrainConfig, n_train: int) -> "Plan":
        spe = max(1, n_train // cfg.batch_size)
        n, unit = cfg.length
        if unit == "epochs":
            return cls(spe, n, n * spe)
        return cls(spe, math.ceil(n / spe), n)

    def steps_in(self, epoch: int) -> int:  # epoch is 1-based
        return min(self.steps_per_epoch, self.iterations - (epoch - 1) * self.steps_per_epoch)


class LRSchedule:
    """The lr of iteration k (0-based): the recipe's schedule, behind the paper's warm-up.

    step:     lr * gamma^(milestones passed); milestones in the run's unit, default 1/2 and 3/4
              of it (He 2016a: 0.1, /10 at 32k and 48k of 64k iterations).
    cosine:   lr * (1 + cos(pi k / K)) / 2.   constant: lr.
    plateau:  lr * gamma^(drops), one drop each time the epochs' error stops improving (He 2016a
              Sec. 3.4's ImageNet rule as stated; the preset's 30/60-of-90 milestones are the fixed
              form fb.resnet.torch uses). Decided at epoch ends, on numbers every rank shares.
    warm-up:  He 2016a Sec. 4.2 (ResNet-110): warmup_lr until the running training error falls
              below warmup_until_error, then back to the schedule's lr for the current iteration
              (so it composes with the milestones). It never raises the lr above the schedule and
              never comes back. With warmup_iterations (He 2016b Appendix: 400), it ends after that
              many iterations instead.
    """

    def __init__(self, cfg: TrainConfig, plan: Plan) -> None:
        self.cfg, self.total = cfg, plan.iterations
        n, unit = cfg.length
        per_unit = plan.steps_per_epoch if unit == "epochs" else 1
        milestones = cfg.milestones if cfg.milestones is not None else (n / 2, 3 * n / 4)
        self.boundaries = sorted(round(m * per_unit) for m in milestones)
        self.warming = cfg.warmup
        self.ema, self.count = 0.0, 0
        self.drops, self.best, self.stale = 0, math.inf, 0  # schedule=plateau

    def base(self, k: int) -> float:
        cfg = self.cfg
        if cfg.schedule == "step":
            return cfg.lr * cfg.gamma ** sum(k >= b for b in self.boundaries)
        if cfg.schedule == "plateau":
            return cfg.lr * cfg.gamma ** self.drops
        if cfg.schedule == "cosine":
            return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(k, self.total) / self.total))
        return cfg.lr

    def lr(self, k: int) -> float:
        return min(self.cfg.warmup_lr, self.base(k)) if self.warming else self.base(k)

    def observe(self, k: int, batch_error: float) -> None:
        """Feed iteration k's training error; ends the warm-up when the running error is low
        (He 2016a), or after warmup_iterations (He 2016b) when that is set."""
        if not self.warming:
            return
        if self.cfg.warmup_iterations is not None:
            self.warming = k + 1 < self.cfg.warmup_iterations
            return
        self.count += 1
        self.ema = WARMUP_EMA * self.ema + (1 - WARMUP_EMA) * batch_error
        if self.ema / (1 - WARMUP_EMA ** self.count) < self.cfg.warmup_until_error:
            self.warming = False

    def epoch_end(self, metrics: dict) -> None:
        """schedule=plateau: feed an epoch's errors (never the test error); drop the lr after
        plateau_patience epochs without an improvement of plateau_threshold on the best."""
        if self.cfg.schedule != "plateau":
            return
        error = metrics.get("val_error", metrics["train_error"])
        if error < self.best - self.cfg.plateau_threshold:
            self.best, self.stale = error, 0
            return
        self.stale += 1
        if self.stale >= self.cfg.plateau_patience:
            self.drops, self.stale = self.drops + 1, 0

    def state_dict(self) -> dict:
        return {"warming": self.warming, "ema": self.ema, "count": self.count,
                "drops": self.drops, "best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.warming, self.ema, self.count = bool(state["warming"]), float(state["ema"]), int(state["count"])
        self.drops, self.best, self.stale = int(state.get("drops", 0)), float(state.get("best", math.inf)), \
            int(state.get("stale", 0))


# -- execution settings ---------------------------------------------------------------------------
# cuBLAS reads this at its first call: a process that may train deterministically on CUDA sets it
# before then (runners/cli.py main does, for every command); setting it later has no effect.
CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextlib.contextmanager
def runtime(cfg: TrainConfig, device: torch.device):
    """Threads and determinism for the duration of a run; the process's settings are restored."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    det_warn, bench = torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark
    fill = _fill_uninitialized()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault(*CUBLAS_WORKSPACE)  # in time only if CUDA has not run cuBLAS yet
        # The head pools with a mean (AdaptiveAvgPool2d has no deterministic CUDA backward). Should
        # some op of a future torch lack a deterministic CUDA kernel, warn rather than stop a long
        # GPU run; on CPU every op is deterministic and resumes are bit-exact (tested).
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
        # Deterministic mode also NaN-fills every torch.empty by default: a kernel per allocation
        # that buys nothing here (every buffer the trainer reads is written first).
        _fill_uninitialized(False)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        torch.backends.cudnn.benchmark = bench
        _fill_uninitialized(fill)


def _fill_uninitialized(value: bool | None = None) -> bool | None:
    """torch.utils.deterministic.fill_uninitialized_memory (torch >= 2.1): read, or set if given."""
    det = getattr(torch.utils, "deterministic", None)
    if det is None or not hasattr(det, "fill_uninitialized_memory"):
        return None
    if value is not None:
        det.fill_uninitialized_memory = value
    return det.fill_uninitialized_memory


def use_amp(cfg: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast: by default on a CUDA device that supports bf16; off on CPU unless asked for
    (slower there: README, Performance)."""
    if cfg.amp == "bf16":
        return True
    return cfg.amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def eval_batch_size(cfg: TrainConfig, device: torch.device) -> int:
    return cfg.eval_batch_size or EVAL_BATCH.get(device.type, EVAL_BATCH["cpu"])


class MixedPrecision(nn.Module):
    """The network's body under bf16 autocast (when `amp`), its head (pooling and the linear
    classifier) in fp32: logits and losses then carry no bf16 rounding, so CUDA (bf16) and CPU
    (fp32) runs are compared on the same footing. Returns fp32 logits (N, classes)."""

    def __init__(self, model: ResNet, amp: bool) -> None:
        super().__init__()
        self.model, self.amp = model, amp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            features = m.stages(m.stem(x))  # (N, C, H', W')
        return m.head(features.float())


def compile_forward(net: nn.Module, mode: str = "default", backend: str | Callable = "inductor") -> nn.Module:
    """torch.compile `net` for one run. Dynamo's code cache is per process and keyed on the code
    object (ResNet.forward and the blocks' forwards are one code object for every architecture),
    so a study worker's 9th architecture would hit the recompile limit and silently run eager:
    reset it first. dynamic=False: the batch shape is fixed (the last partial batch is dropped)."""
    torch._dynamo.reset()
    if backend != "inductor":  # modes are inductor's
        return torch.compile(net, dynamic=False, backend=backend)
    return torch.compile(net, dynamic=False, mode=None if mode == "default" else mode)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of `model` (a MixedPrecision net, maybe compiled); returns the batch's (mean
    loss, wrong predictions) as device tensors, unsynced."""
    out = model(x)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach().float(), (out.detach().argmax(1) != y).sum()


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    # Weight decay on every parameter, BN included, as in the paper's (Caffe/Torch) recipe.
    # foreach: one multi-tensor kernel per update, where torch's CPU default loops over the
    # tensors (CUDA already defaults to it); measured in the README's Performance section.
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, foreach=True)


# -- evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: MixedPrecision, data: Dataset, split: Split, cfg: TrainConfig) -> tuple[float, float]:
    """(mean loss, error) of `split`, in eval mode, without augmentation.

    Each rank evaluates its shard and the sums are added up. Multi-crop batches (N, K, C, H, W)
    (ten_crop) score the mean of the K crops' softmax (He 2016a Sec. 3.4, 10-crop testing)."""
    ctx = distributed.current()
    distributed.sync_buffers(model, ctx)  # every shard is scored by the model rank 0 checkpoints
    model.eval()
    loss = torch.zeros((), device=data.device, dtype=torch.float64)
    wrong = torch.zeros((), device=data.device, dtype=torch.float64)
    for x, y in data.eval_batches(split, eval_batch_size(cfg, data.device), ctx.rank, ctx.world):
        crops = x.shape[1] if x.dim() == 5 else 0
        out = model(x.flatten(0, 1) if crops else x.contiguous(memory_format=memory_format(cfg)))
        if crops:
            # log of the mean probability, as a logsumexp: a crop's underflowing softmax is no -inf
            out = torch.logsumexp(out.view(len(y), crops, -1).log_softmax(-1), 1) - math.log(crops)
            loss += F.nll_loss(out, y, reduction="sum")
        else:
            loss += F.cross_entropy(out, y, reduction="sum")
        wrong += (out.argmax(1) != y).sum()
    loss, wrong = distributed.all_sum(torch.stack([loss, wrong]), ctx).tolist()
    return loss / len(split), wrong / len(split)


@torch.no_grad()
def layer_responses(model: ResNet, data: Dataset, split: Split, batch_size: int = 250) -> list[dict]:
    """He 2016a Fig. 7: the std of each 3x3 layer's response (after BN, before the addition and
    the nonlinearity) over `split`, in eval mode and fp32; the std is over all of a layer's
    outputs (images, channels, positions). Statistics are taken inside the forward hook, before
    any in-place ReLU that follows can overwrite the tensor."""
    model.eval()
    points = model.response_modules()
    sums = torch.zeros(len(points), 2, dtype=torch.float64, device=data.device)
    counts = [0] * len(points)

    def hook(i: int):
        def record(module, inputs, out):
            sums[i, 0] += out.sum(dtype=torch.float64)
            sums[i, 1] += out.double().square().sum()
            counts[i] += out.numel()
        return record

    handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(points)]
    try:
        for x, _ in data.eval_batches(split, batch_size):
            model(x.flatten(0, 1) if x.dim() == 5 else x)  # ten_crop: every crop is a response
    finally:
        for h in handles:
            h.remove()
    sums = sums.cpu()
    out = []
    for i, (name, _) in enumerate(points):
        mean, sq = sums[i, 0].item() / counts[i], sums[i, 1].item() / counts[i]
        out.append({"index": i, "layer": name, "std": math.sqrt(max(sq - mean * mean, 0.0))})
    return out


# -- checkpoints ----------------------------------------------------------------------------------
def config_signature(arch: ArchSpec, cfg: TrainConfig, data_cfg: DataConfig) -> dict:
    """What a run computes: must match to resume; hashed into the CLI's default checkpoint dir."""
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_FIELDS}
    train["milestones"] = list(cfg.milestones) if cfg.milestones is not None else None
    return {"arch": arch.as_dict(), "train": train, "data": dataclasses.asdict(data_cfg)}


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a crash leaves the previous checkpoint or the new one, never half of one.
    A write that fails (a full disk) removes its temporary file and raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint at `path` (tensors on the CPU), or None; weights_only, so no pickle code runs.

    A checkpoint that cannot be used (truncated, garbled, of another format version) is moved
    aside, kept for inspection and named in a warning, and None is returned: its run starts over
    rather than stopping.
    """
    # A temporary file here is a write that died with its process (a kill -9 mid-write): this
    # cell's directory belongs to one attempt at a time, so nothing is writing it now.
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        why = None if isinstance(state, dict) and state.get("version") == CHECKPOINT_VERSION else \
            f"format version {state.get('version') if isinstance(state, dict) else '?'}, expected {CHECKPOINT_VERSION}"
    except Exception as e:  # noqa: BLE001 - any unreadable file is handled the same way
        why = type(e).__name__
    if why is None:
        return state
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    _log.warning("checkpoint %s cannot be read (%s); kept as %s, starting this run from scratch", path, why, aside)
    return None


def check_signature(path: Path, saved: dict, current: dict) -> None:
    for part in ("arch", "train", "data"):
        for key in sorted(set(saved[part]) | set(current[part])):
            a, b = saved[part].get(key), current[part].get(key)
            if a != b:
                raise ConfigError(f"checkpoint {path} is of another run ({part}.{key}: {a!r} there, "
                                  f"{b!r} here); pass --fresh to discard it or use another checkpoint dir")


# -- the training run -----------------------------------------------------------------------------
def train(arch: ArchSpec, cfg: TrainConfig, data: DataConfig | Dataset | StreamDataset, *,
          tracker: tracking.Tracker | None = None, checkpoint_dir: str | Path | None = None,
          on_epoch: Callable[[int, dict], None] | None = None, model_name: str | None = None,
          progress: bool = False) -> TrainResult:
    """Train `arch` with recipe `cfg` on `data`; log to `tracker` (without ending its run).

    With `checkpoint_dir`, every epoch is checkpointed there; a checkpoint found there is resumed
    (its history first re-logged to `tracker`), and a finished one is returned without training.
    `on_epoch(epoch, metrics)` runs after each epoch is logged and checkpointed; what it raises
    propagates unchanged (e.g. optuna.TrialPruned). `progress` shows a tqdm bar on a terminal.

    Under torch.distributed (runners/train/distributed.py: the caller initialises the group),
    every rank calls this with the same arguments; cfg.batch_size is the global batch, and only
    rank 0 writes the checkpoint (pass the tracker on rank 0 only).
    """
    arch, cfg = arch.validate(), cfg.validate()
    device = resolve_device(cfg.device)
    ctx = distributed.current()
    distributed.local_batch(cfg.batch_size, ctx.world)
    with runtime(cfg, device):
        dataset = (data if isinstance(data, (Dataset, StreamDataset)) else load_dataset(data, device)).to(device)
        if isinstance(dataset, StreamDataset):
            dataset = dataset.with_workers(cfg.workers if cfg.workers is not None else default_workers(ctx.local_world))
        result = Run(arch, cfg, dataset, device, tracker, checkpoint_dir, model_name).run(on_epoch, progress)
    # Rank 0 may still be writing the last checkpoint and logging to MLflow: the ranks return
    # together, since a rank that tears its process group down first aborts (and torchrun then
    # kills rank 0 mid-write).
    distributed.barrier(ctx)
    return result


def reseed(gen: torch.Generator, seed: int, epoch: int) -> torch.Generator:
    """The augmentation generator of a run resumed after `epoch` on another device type: a CPU
    generator's state (5,056 bytes) does not fit a CUDA one (16 bytes) nor the reverse, and the
    two draw different streams anyway. Reseeding from (seed, epoch) keeps the resume
    deterministic (the same checkpoint resumes the same way), though no longer identical to an
    uninterrupted run on either device."""
    return gen.manual_seed(seed * 2**20 + epoch)


def generator_state(gen: torch.Generator) -> dict:
    return {"device": gen.device.type, "state": gen.get_state()}


def restore_generator(gen: torch.Generator, saved: dict | torch.Tensor, seed: int, epoch: int) -> bool:
    """Restore `gen` from generator_state(); True if restored exactly, False if reseeded."""
    if isinstance(saved, dict):
        kind, state = saved["device"], saved["state"]
    else:  # a bare state, from before the device type was saved: the state's size tells
        kind, state = (gen.device.type if saved.numel() == gen.get_state().numel() else "other"), saved
    if kind != gen.device.type:
        reseed(gen, seed, epoch)
        return False
    gen.set_state(state)
    return True


@dataclass
class Tally:
    """An epoch's running totals, on the device (read once, at the end of the epoch)."""

    loss: torch.Tensor  # sum of per-image losses
    wrong: torch.Tensor
    seen: int = 0
    lr: float = 0.0

    @classmethod
    def zeros(cls, device: torch.device) -> "Tally":
        return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))


class Run:
    """The state of one training run; `run()` is the loop, the rest is bookkeeping. `ablate bench`
    drives `forward()`, `order()` and `steps()` directly, so it times this code, not a copy."""

    def __init__(self, arch, cfg, data, device, tracker, checkpoint_dir, model_name) -> None:
        self.arch, self.cfg, self.data, self.device, self.tracker = arch, cfg, data, device, tracker
        self.model_name = model_name or tracking.variant_name(arch)
        self.path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
        self.signature = config_signature(arch, cfg, data.config)
        self.plan = Plan.of(cfg, len(data.train))
        self.amp, self.fmt = use_amp(cfg, device), memory_format(cfg)
        self.check_every = 1 if device.type == "cpu" else 25  # a host sync per step is free only on CPU
        self.dist = distributed.current()

        torch.manual_seed(cfg.seed)  # the initialisation; the data order has its own generator
        self.model = ResNet(arch, num_classes=data.num_classes)
        self.complexity = self.model.complexity(data.input_size)
        self.model.to(device=device, memory_format=self.fmt)
        self.net = MixedPrecision(self.model, self.amp)
        self.opt = make_optimizer(self.model, cfg)
        self.schedule = LRSchedule(cfg, self.plan)
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.history: list[dict] = []
        self.epoch, self.iteration, self.status, self.responses = 0, 0, "running", None
        self.reseeded_at: int | None = None  # the epoch after which the augmentation was reseeded

    # -- checkpoint state --
    def state(self) -> dict:
        return {"version": CHECKPOINT_VERSION, "status": self.status, "epoch": self.epoch,
                "iteration": self.iteration, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.schedule.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "augment": generator_state(self.gen)},
                "history": self.history, "responses": self.responses, "signature": self.signature}

    def restore(self, s: dict) -> None:
        check_signature(self.path, s["signature"], self.signature)
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        self.schedule.load_state_dict(s["scheduler"])
        torch.set_rng_state(s["rng"]["torch"])  # the CPU's: the same on every device
        self.history, self.responses = list(s["history"]), s["responses"]
        self.epoch, self.iteration, self.status = int(s["epoch"]), int(s["iteration"]), s["status"]
        if not restore_generator(self.gen, s["rng"]["augment"], self.cfg.seed, self.epoch):
            self.reseeded_at = self.epoch

    def checkpoint(self) -> None:
        if self.path is not None and self.dist.is_main:  # written once; every rank reads it on start
            save_checkpoint(self.path, self.state())

    # -- tracking --
    def log_start(self) -> None:
        t, cx = self.tracker, self.complexity
        if t is None:
            return
        t.log_params(tracking.run_params(self.arch, self.cfg, self.data.config, model_name=self.model_name,
                                         params=cx.params, macs=cx.macs))
        tags = {**tracking.axis_tags(self.arch, self.cfg.seed), "model": self.model_name}
        if self.reseeded_at is not None:
            tags["augment_reseeded_at_epoch"] = str(self.reseeded_at)
        sha = tracking.git_commit()
        if sha:
            tags["mlflow.source.git.commit"] = sha
        t.set_tags(tags)
        d = self.data
        t.log_dict({"model": self.model_name, "arch": self.arch.as_dict(),
                    "train": dataclasses.asdict(self.cfg), "data": dataclasses.asdict(d.config),
                    "dataset": {"name": d.name, "train": len(d.train), "val": len(d.val),
                                "test": len(d.test), "classes": d.classes, "input_size": d.input_size},
                    "plan": dataclasses.asdict(self.plan), "device": str(self.device),
                    "amp": self.amp, "torch": torch.__version__, "git_sha": sha}, "config.json")
        t.log_dict({**cx.as_dict(), "rows": cx.rows}, "complexity.json")
        t.log_dataset(d)
        for m in self.history:  # a resumed attempt's run still gets the complete curves
            t.log_metrics({k: v for k, v in m.items() if k != "epoch"}, step=m["epoch"])

    def log_end(self) -> None:
        t = self.tracker
        if t is None:
            return
        if self.status == "finished":
            t.log_state_dict({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                             model_name=tracking.run_name(self.arch, self.cfg.seed), step=self.epoch)
            if self.responses is not None:
                t.log_dict(self.responses, "layer_responses.json")
                t.log_metric_series("layer_response_std", [r["std"] for r in self.responses])
        t.set_tags({"diverged": self.status == "diverged"})

    # -- the loop --
    def run(self, on_epoch, progress: bool) -> TrainResult:
        saved = load_checkpoint(self.path) if self.path is not None else None
        if saved is not None:
            self.restore(saved)
        self.log_start()
        if self.status in ("finished", "diverged"):
            self.log_end()
            return self.result()
        bar = None
        if progress:  # tqdm only when asked: `ablate doctor` runs with torch alone
            from tqdm.auto import tqdm
            bar = tqdm(total=self.plan.iterations, initial=self.iteration, unit="it", file=sys.stderr,
                       disable=None, leave=False, dynamic_ncols=True)
        forward = self.forward()
        try:
            while self.epoch < self.plan.epochs and self.status == "running":
                metrics = self.train_epoch(forward, bar)
                if metrics is None:
                    self.status = "diverged"
                    break
                self.history.append(metrics)
                self.schedule.epoch_end(metrics)
                self.epoch += 1
                if self.tracker is not None:
                    self.tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=self.epoch)
                self.checkpoint()
                if bar is not None:
                    bar.set_postfix(epoch=self.epoch, train_err=f"{metrics['train_error']:.3f}",
                                    test_err=f"{metrics['test_error']:.3f}")
                if on_epoch is not None:
                    on_epoch(self.epoch, metrics)
        finally:
            if bar is not None:
                bar.close()
        if self.status == "running":
            self.status = "finished"
            if self.cfg.probe and self.dist.is_main:  # logged and checkpointed by rank 0 only
                self.responses = layer_responses(self.model, self.data, self.data.test)
        self.log_end()
        self.checkpoint()
        return self.result()

    def forward(self) -> nn.Module:
        """The training forward: the mixed-precision net (in DDP when distributed), compiled if
        the recipe says so."""
        net = distributed.wrap(self.net, self.dist, self.device, self.cfg.sync_bn)
        return compile_forward(net, self.cfg.compile_mode) if self.cfg.compile else net

    def batches(self, epoch: int):
        """This rank's training batches of `epoch` (1-based), in the order of (seed, epoch)."""
        return self.data.train_batches(epoch, self.cfg.batch_size, self.gen, seed=self.cfg.seed,
                                       rank=self.dist.rank, world=self.dist.world)

    def finite(self, tally: Tally) -> bool:
        # distributed: the ranks decide on the sum, so all of them stop at the same step
        return bool(torch.isfinite(distributed.all_sum(tally.loss, self.dist)).item())

    def steps(self, forward: nn.Module, batches, count: int, tally: Tally, bar=None) -> bool:
        """`count` steps on the next batches of `batches`, added to `tally`; False when the loss
        turned non-finite (checked every `check_every` steps and after the last)."""
        for s, (x, y) in zip(range(count), batches):
            tally.lr = self.schedule.lr(self.iteration)
            for group in self.opt.param_groups:
                group["lr"] = tally.lr
            loss, batch_wrong = train_step(forward, self.opt, x.contiguous(memory_format=self.fmt), y)
            tally.loss += loss * len(y)
            tally.wrong += batch_wrong
            tally.seen += len(y)
            if self.schedule.warming:  # the only per-step sync outside the CPU; warm-up is short
                # distributed: the global batch's error, so every rank leaves the warm-up together
                global_wrong = distributed.all_sum(batch_wrong.float(), self.dist).item()
                self.schedule.observe(self.iteration, global_wrong / (len(y) * self.dist.world))
            self.iteration += 1
            if bar is not None:
                bar.update(1)
            if (s + 1) % self.check_every == 0 and s + 1 < count and not self.finite(tally):
                return False
        return self.finite(tally)

    def train_epoch(self, forward: nn.Module, bar) -> dict | None:
        """One epoch; its metrics, or None when a loss turned non-finite."""
        data, cfg, device = self.data, self.cfg, self.device
        epoch = self.epoch + 1
        self.net.train()
        tally = Tally.zeros(device)
        tally.lr = self.schedule.lr(self.iteration)
        sync(device)
        start = time.perf_counter()
        if not self.steps(forward, self.batches(epoch), self.plan.steps_in(epoch), tally, bar):
            return None
        sync(device)
        seconds = time.perf_counter() - start
        totals = distributed.all_sum(torch.stack([tally.loss.double(), tally.wrong.double(),
                                                  torch.tensor(float(tally.seen), device=device, dtype=torch.float64)]),
                                     self.dist)
        loss_total, wrong_total, seen = totals.tolist()
        metrics = {"epoch": epoch, "train_loss": loss_total / seen, "train_error": wrong_total / seen}
        if len(data.val):
            metrics["val_loss"], metrics["val_error"] = evaluate(self.net, data, data.val, cfg)
        metrics["test_loss"], metrics["test_error"] = evaluate(self.net, data, data.test, cfg)
        if not all(math.isfinite(v) for v in metrics.values()):
            return None
        metrics.update(lr=tally.lr, epoch_seconds=seconds, images_per_second=seen / seconds,
                       iteration=self.iteration)
        return metrics

    def result(self) -> TrainResult:
        vals = [m["val_error"] for m in self.history if "val_error" in m]
        return TrainResult(status=self.status, epochs=len(self.history), history=list(self.history),
                           final=dict(self.history[-1]) if self.history else {},
                           best_val_error=min(vals) if vals else None, responses=self.responses)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings must not stop before the kernels do)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
