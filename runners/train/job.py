"""One `ablate train` run as library calls (its configs are assembled by runners/train/config.py
`assemble`): its data, size and checkpoint found (`prepare`), then trained with its
MLflow run (`train_tracked`). The command parses the flags into field values and prints.

Everything is validated, the data loaded and the model sized before an MLflow run exists, so
bad input leaves the store untouched. The checkpoint directory defaults to
results/checkpoints/<model>-<hash of the resolved config>/, so the same command resumes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from models.network import ResNet
from models.registry import describe

from ..paths import default_tracking_uri, results_dir
from ..tracking.store import client
from ..tracking.tracker import Tracker, tracked_run
from . import distributed
from .checkpoint import CHECKPOINT, check_signature, config_signature, load_checkpoint
from .config import Job
from .data import load_dataset
from .execution import resolve_device
from .trainer import TrainResult, train

DEFAULT_EXPERIMENT = "ablate-train"


def default_checkpoint_dir(job: Job) -> Path:
    key = json.dumps(config_signature(job.arch, job.train, job.data), sort_keys=True, default=str)
    return results_dir() / "checkpoints" / f"{job.model}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


@dataclass
class Prepared:
    data: object  # the loaded Dataset (or StreamDataset)
    info: dict  # models.describe of the net at the data's size and classes
    checkpoint_dir: Path | None
    saved: dict | None  # the checkpoint found there, if any

    @property
    def checkpoint(self) -> Path | None:
        return self.checkpoint_dir / CHECKPOINT if self.checkpoint_dir is not None else None

    @property
    def done(self) -> bool:
        """The checkpoint is of a finished (or diverged) run: nothing to train."""
        return self.saved is not None and self.saved["status"] in ("finished", "diverged")


def prepare(job: Job, ctx: distributed.Context, *, checkpoint_dir: str | None = None, fresh: bool = False,
            keep: bool = True) -> Prepared:
    """The data loaded, the net sized and the checkpoint found, all validated. `fresh` deletes the
    checkpoint (on rank 0, before any rank reads it); `keep` False keeps none."""
    data = load_data(job)
    with torch.device("meta"):  # shapes only: the size report costs no memory or initialisation
        info = describe(ResNet(job.arch, num_classes=data.num_classes))
    if not keep:
        return Prepared(data, info, None, None)
    folder = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(job)
    path = folder / CHECKPOINT
    if fresh and ctx.is_main and path.exists():
        path.unlink()
    distributed.barrier(ctx)
    saved = load_checkpoint(path)
    if saved is not None:
        check_signature(path, saved["signature"], config_signature(job.arch, job.train, job.data))
    return Prepared(data, info, folder, saved)


def load_data(job: Job):
    return load_dataset(job.data, resolve_device(job.train.device))


@dataclass
class Tracked:
    result: TrainResult
    run_id: str | None  # None on ranks other than 0
    experiment_id: str | None
    tracking_uri: str


def train_tracked(job: Job, prepared: Prepared, ctx: distributed.Context, *, experiment: str = DEFAULT_EXPERIMENT,
                  run_name: str | None = None, tracking_uri: str | None = None,
                  on_epoch: Callable[[int, dict], None] | None = None) -> Tracked:
    """Train the job into one MLflow run (rank 0 opens it; the others train without one)."""
    uri = tracking_uri or default_tracking_uri()
    tracker = None
    if ctx.is_main:
        c = client(uri)  # the first touch of the store
        tracker = Tracker.start(c, experiment, run_name or f"{job.model}-{prepared.data.name}-s{job.train.seed}")
    with tracked_run(tracker) if tracker is not None else contextlib.nullcontext():
        result = train(job.arch, job.train, prepared.data, tracker=tracker, checkpoint_dir=prepared.checkpoint_dir,
                       on_epoch=on_epoch if ctx.is_main else None, model_name=job.model, progress=ctx.is_main)
    if tracker is None:
        return Tracked(result, None, None, uri)
    return Tracked(result, tracker.run_id, tracker.client.get_run(tracker.run_id).info.experiment_id, uri)


def train_pack_tracked(jobs: list[Job], *, experiment: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None,
                       fresh: bool = False, on_epoch: Callable[[int, dict], None] | None = None) -> list[Tracked]:
    """`ablate train --pack K`: the jobs (seeds of one model) trained as one pack
    (runners/train/packed.py), each into its own MLflow run and its default checkpoint
    directory, so the same command resumes every one of them. `on_epoch` sees the first job's epochs."""
    from .packed import Member, check_packable, train_packed
    data = load_data(jobs[0])
    check_packable([Member(j.arch, j.train, model_name=j.model) for j in jobs], jobs[0].data)  # before any run exists
    uri = tracking_uri or default_tracking_uri()
    out: list[Tracked | None] = [None] * len(jobs)
    todo = []  # (index, job, folder) of the jobs not finished yet
    for i, job in enumerate(jobs):
        folder = default_checkpoint_dir(job)
        if fresh:
            (folder / CHECKPOINT).unlink(missing_ok=True)
        saved = load_checkpoint(folder / CHECKPOINT)
        if saved is not None:
            check_signature(folder / CHECKPOINT, saved["signature"], config_signature(job.arch, job.train, job.data))
        if saved is not None and saved["status"] in ("finished", "diverged"):  # as `ablate train`: not again
            out[i] = Tracked(saved_result(saved), None, None, uri)
        else:
            todo.append((i, job, folder))
    if not todo:
        return out
    c = client(uri)
    with contextlib.ExitStack() as stack:
        names = [f"{j.model}-{data.name}-s{j.train.seed}" for _, j, _ in todo]
        trackers = [stack.enter_context(tracked_run(Tracker.start(c, experiment, n))) for n in names]
        members = [Member(j.arch, j.train, t, folder, on_epoch if n == 0 else None, j.model)
                   for n, ((_, j, folder), t) in enumerate(zip(todo, trackers))]
        results = train_packed(members, data)
    exp = c.get_run(trackers[0].run_id).info.experiment_id
    for (i, _, _), r, t in zip(todo, results, trackers):
        if isinstance(r, Exception):
            raise r
        out[i] = Tracked(r, t.run_id, exp, uri)
    return out


def saved_result(saved: dict) -> TrainResult:
    """The result a finished checkpoint holds."""
    history = list(saved["history"])
    vals = [m["val_error"] for m in history if "val_error" in m]
    return TrainResult(status=saved["status"], epochs=len(history), history=history,
                       final=dict(history[-1]) if history else {}, best_val_error=min(vals) if vals else None,
                       responses=saved["responses"])
