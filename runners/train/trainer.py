"""The trainer: a function of (architecture, recipe, data), with no globals.

    result = train(models.resolve("resnet20"), TrainConfig(epochs=160), DataConfig("cifar10"),
                   tracker=tracker, checkpoint_dir="results/checkpoints/x")

The recipe is He et al. 2016a Sec. 4.2 (see runners/train/config.py). The whole dataset sits on the
training device as uint8 and is augmented there in batches (runners/train/data.py). Every epoch
records the training loss and error as measured on the fly (the augmented batches, in training
mode, as the paper plots them), the validation and test loss and top-1 and top-5 error (and the
center crop's alone under 10-crop testing), the lr, the time and
the throughput; is logged to the tracker (the contract in runners/tracking/naming.py); and is
checkpointed atomically with the model, optimizer, schedule and RNG states, so an interrupted run
resumes exactly (bit-identical on CPU in deterministic mode). The CUDA generators are not saved:
nothing in training draws from them (the data order and augmentation have their own generator,
the initialisation draws on the CPU). A non-finite loss ends the run as
"diverged": a result, not an exception. Selection (`best_val_error`) reads validation only.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.network import ResNet
from models.spec import ArchSpec

from ..tracking.naming import axis_tags, git_commit, run_name, run_params, variant_name
from . import distributed
from .checkpoint import (CHECKPOINT, CHECKPOINT_VERSION, check_signature, config_signature, generator_state,
                         load_checkpoint, restore_generator, save_checkpoint, set_aside, signature_difference)
from .config import DataConfig, TrainConfig
from .data import Dataset, load_dataset
from .evaluation import evaluate, evaluate_multiscale, layer_responses
from .execution import (MixedPrecision, compile_forward, memory_format, precision_on,
                        resolve_device, runtime, sync, use_bf16)
from .schedule import LRSchedule, Plan
from .stream import StreamDataset, default_workers

if TYPE_CHECKING:  # the trainer writes to any tracker; only rank 0 of a run has one, and `ablate doctor` none
    from ..tracking.tracker import Tracker


@dataclass
class TrainResult:
    status: str  # "finished" | "diverged"
    epochs: int  # epochs completed (with finite losses)
    history: list[dict]  # per-epoch metrics, keys as the tracking contract, plus "epoch"
    final: dict  # the last completed epoch's metrics ({} if none)
    best_val_error: float | None  # min validation error over epochs; None without a val split
    responses: list[dict] | None  # [{"index", "layer", "std"}], He 2016a Fig. 7; None if not probed


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
    # Weight decay on every parameter, BN included, as in the paper's (Caffe/Torch) recipe; the
    # gates' b_g (He 2016b Sec. 3.1) only with train.gate_bias_decay (its default, as Caffe does).
    # foreach: one multi-tensor kernel per update, where torch's CPU default loops over the
    # tensors (CUDA already defaults to it); measured in the README's Performance section.
    params = list(model.parameters())
    if not cfg.gate_bias_decay:
        gates = {id(m.gate_bias) for m in model.modules() if hasattr(m, "gate_bias")}
        params = [{"params": [p for p in params if id(p) not in gates]},
                  {"params": [p for p in params if id(p) in gates], "weight_decay": 0.0}]
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, foreach=True)


def train(arch: ArchSpec, cfg: TrainConfig, data: DataConfig | Dataset | StreamDataset, *,
          tracker: Tracker | None = None, checkpoint_dir: str | Path | None = None,
          on_epoch: Callable[[int, dict], None] | None = None, model_name: str | None = None,
          progress: bool = False, guard: Callable[[], None] | None = None,
          foreign_checkpoint: str = "refuse") -> TrainResult:
    """Train `arch` with recipe `cfg` on `data`; log to `tracker` (without ending its run).

    With `checkpoint_dir`, every epoch is checkpointed there; a checkpoint found there is resumed
    (its history first re-logged to `tracker`), and a finished one is returned without training.
    `on_epoch(epoch, metrics)` runs after each epoch is logged and checkpointed; what it raises
    propagates unchanged (e.g. optuna.TrialPruned). `progress` shows a tqdm bar on a terminal.
    `guard()` runs before each epoch's results are written (metrics, checkpoint) and before the
    final ones; what it raises propagates, and nothing more is written (a study's worker checks
    there that its trial is still its own: runners/study/trial.py). A checkpoint of another
    configuration in `checkpoint_dir` is refused (ConfigError), or with `foreign_checkpoint`
    "set_aside" kept aside with a warning and the run started from scratch (a study's cell folder).

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
        run = Run(arch, cfg, dataset, device, tracker, checkpoint_dir, model_name)
        run.guard, run.foreign_checkpoint = guard or run.guard, foreign_checkpoint
        result = run.run(on_epoch, progress)
    # Rank 0 may still be writing the last checkpoint and logging to MLflow: the ranks return
    # together, since a rank that tears its process group down first aborts (and torchrun then
    # kills rank 0 mid-write).
    distributed.barrier(ctx)
    return result


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
        self.model_name = model_name or variant_name(arch)
        self.path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
        self.signature = config_signature(arch, cfg, data.config)
        self.plan = Plan.of(cfg, len(data.train))
        self.amp, self.fmt = use_bf16(cfg, device), memory_format(cfg)
        self.precision = precision_on(cfg, device)  # recorded in config.json (tf32 is fp32 on a CPU)
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
        self.guard: Callable[[], None] = lambda: None  # before each write of results (see train)
        self.foreign_checkpoint = "refuse"  # or "set_aside" (see train)

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
        t.log_params(run_params(self.arch, self.cfg, self.data.config, model_name=self.model_name,
                                         params=cx.params, macs=cx.macs))
        # The precision it computes in (tf32 is fp32 on a CPU) and where: a filter in the MLflow
        # UI, beside train.precision (what was asked).
        tags = {**axis_tags(self.arch, self.cfg.seed), "model": self.model_name, "precision": self.precision,
                "device": str(self.device)}
        if self.reseeded_at is not None:
            tags["augment_reseeded_at_epoch"] = str(self.reseeded_at)
        sha = git_commit()
        if sha:
            tags["mlflow.source.git.commit"] = sha
        t.set_tags(tags)
        d = self.data
        t.log_dict({"model": self.model_name, "arch": self.arch.as_dict(),
                    "train": dataclasses.asdict(self.cfg), "data": dataclasses.asdict(d.config),
                    "dataset": {"name": d.name, "train": len(d.train), "val": len(d.val),
                                "test": len(d.test), "classes": d.classes, "input_size": d.input_size},
                    "plan": dataclasses.asdict(self.plan), "device": str(self.device),
                    "precision": self.precision, "torch": torch.__version__, "git_sha": sha}, "config.json")
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
                             model_name=run_name(self.arch, self.cfg.seed), step=self.epoch)
            if self.responses is not None:
                t.log_dict(self.responses, "layer_responses.json")
                t.log_metric_series("layer_response_std", [r["std"] for r in self.responses])
        t.set_tags({"diverged": self.status == "diverged"})

    # -- the loop --
    def run(self, on_epoch, progress: bool) -> TrainResult:
        saved = load_checkpoint(self.path) if self.path is not None else None
        if saved is not None and self.foreign_checkpoint == "set_aside" and \
                (difference := signature_difference(saved.get("signature") or {}, self.signature)):
            # Another run's checkpoint in this run's folder (a study started over under the same
            # name with a changed spec): never resumed, never a failure of every attempt.
            self.guard()
            if self.dist.is_main:
                set_aside(self.path, "other-run", f"is of another run ({difference})")
            saved = None
        if saved is not None:
            self.restore(saved)
        self.log_start()
        if self.status in ("finished", "diverged"):
            self.guard()
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
                self.guard()
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
            self.test_multiscale()
        self.guard()
        self.log_end()
        self.checkpoint()
        return self.result()

    def test_multiscale(self) -> None:
        """He 2016a Table 4's testing of the final net (dataset.multi_scale), once, by rank 0: its
        errors join the last epoch's metrics, so they are logged at its step and kept in the
        checkpoint's history (a resumed run re-logs them)."""
        cfg = self.data.config
        if not cfg.multi_scale or not self.dist.is_main or not self.history:
            return
        scores = evaluate_multiscale(self.model, self.data, self.data.test, cfg.multi_scale, cfg.multi_scale_flip,
                                     self.device)
        scores = {f"test_{k}": v for k, v in scores.items()}
        self.history[-1].update(scores)
        if self.tracker is not None:
            self.tracker.log_metrics(scores, step=self.epoch)

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
        for name, split in (("val", data.val), ("test", data.test)):
            if len(split):
                metrics.update({f"{name}_{k}": v for k, v in evaluate(self.net, data, split, cfg).items()})
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
