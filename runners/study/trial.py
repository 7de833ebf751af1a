"""Run one claimed trial: train its cell, log it to MLflow, tell Optuna how it ended.

An exception inside a trial fails that attempt (recorded as `error`; the cell is retried on the
next run, see runners/study/layout.py) and the study goes on. Ctrl-C or SIGTERM fails the trial
and enqueues its retry at once, so the rerun resumes it from its checkpoint.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import optuna
import torch.distributed as dist
from optuna.trial import TrialState

from ..errors import ConfigError, cut, redact
from ..signals import Terminated
from ..tracking.naming import label, run_name as arch_run_name
from ..tracking.tracker import Abandoned, StoreLost, Tracker, server_calls, tracked_run
from ..tracking.view import group_tags
from ..train import distributed
from ..train.schedule import Plan
from ..train.trainer import train
from . import optuna_private as private
from . import parent
from .layout import CONFIRM, SEARCH, Layout
from .estimate import cell_costs, size_of
from .progress import NoProgress, cell_counts
from .spec import SEARCHABLE
from .storage import Heartbeat, worker_id


@dataclass
class Worker:
    """What a trial needs from the process that runs it."""

    mlflow: object  # MlflowClient
    parent_run_id: str
    data: Callable[[str], object]  # stage -> the loaded Dataset, shared by the process's trials
    device: str
    threads: int | None
    progress: object = field(default_factory=NoProgress)  # a StudyProgress the command chose
    store_lost: Callable[[], bool] = lambda: False  # whether the tracking store's file went away


_COSTS: dict[str, dict | None] = {}


def _costs(spec) -> dict | None:
    """The study's cell costs (estimate.cell_costs), once per process; None where its data
    cannot be counted (the ETA then averages the finished trials)."""
    if spec.fingerprint not in _COSTS:
        try:
            _COSTS[spec.fingerprint] = cell_costs(spec)
        except ConfigError:
            _COSTS[spec.fingerprint] = None
    return _COSTS[spec.fingerprint]


def view_tags(spec) -> dict[str, dict[str, str]]:
    """{variant name: the tags that colour and order its group in the MLflow comparison view}."""
    return group_tags([(label(v.arch), v.arch.total_depth) for v in spec.variants])


def run_trial(layout: Layout, worker: Worker, study: optuna.Study, trial: optuna.Trial) -> bool:
    """Train the trial's cell; False if it failed with an error.

    In a process group (resources.gpus_per_trial > 1) this is rank 0's side, and every other
    rank runs `follow_trial` at the same time: rank 0 sends the cell, the trial's suggestions,
    pruning decisions and stop go through optuna-integration's TorchDistributedTrial, and rank 0
    alone writes to Optuna, MLflow and the checkpoint.
    """
    spec, ctx = layout.spec, distributed.current()
    attrs = dict(private.get_trial(study, private.trial_id(trial)).user_attrs)
    if attrs["stage"] == SEARCH and not attrs.get("checkpoint"):
        attrs["checkpoint"] = f"{SEARCH}/{attrs['variant']}/trial{trial.number}"
        trial.set_user_attr("checkpoint", attrs["checkpoint"])
    attrs["checkpoint"] = str(layout.checkpoint_dir(attrs["checkpoint"]))  # recorded relative to the root
    distributed.broadcast_object(attrs, ctx)
    stage, v, seed, checkpoint = attrs["stage"], spec.variant(attrs["variant"]), attrs["seed"], attrs["checkpoint"]
    tags = {"ablation": spec.name, "study": spec.name, "stage": stage, "variant": v.key,
            "trial": trial.number, "optuna_study": study.study_name, "worker": worker_id(),
            "attempt": attrs.get("attempt", 1), **({"retry_of": attrs["retry_of"]} if "retry_of" in attrs else {}),
            **({"processes": ctx.world} if ctx.distributed else {}),
            **(view_tags(spec)[label(v.arch)] if stage == CONFIRM else {})}
    # Named as the figures name the line: "ResNet-20 (A) s0", "search plain-20 trial 3".
    run_name = arch_run_name(v.arch, seed) if stage == CONFIRM else f"search {label(v.arch)} trial {trial.number}"
    resumed = Path(checkpoint).is_dir() and any(Path(checkpoint).glob("checkpoint.pt"))
    trial.set_user_attr("resumed", resumed)

    pruned = False
    worker.progress.set_done(*cell_counts(spec, layout.all_studies(), _costs(spec)))
    attempt = f" (attempt {attrs['attempt']})" if attrs.get("attempt", 1) > 1 else ""
    title = f"trial {trial.number} {run_name}{attempt}"
    tracker = None
    try:
        tracker = Tracker.start(worker.mlflow, spec.name, run_name, tags=tags, parent_run_id=worker.parent_run_id)
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
        with Heartbeat(study, private.trial_id(trial)), tracked_run(tracker):
            try:
                result = _fit(spec, attrs, worker, trial, tracker, title, resumed, guard=owned(study, trial, worker))
                owned(study, trial, worker)()  # the run is ended FINISHED only while the trial is still ours
            except optuna.TrialPruned:
                pruned = True
                tracker.set_tags({"pruned": "true"})
            except Exception as e:
                if ctx.distributed and lost_peer(e):  # ended KILLED by tracked_run, not FAILED
                    tracker.set_tags({"killed": "lost a process of its group"})
                    e.killed = True
                raise
    except (KeyboardInterrupt, Terminated):
        _give_back(layout, worker, study, trial)
        raise
    except Exception as e:  # noqa: BLE001 - one broken trial must not stop the study
        if isinstance(e, StoreLost) or worker.store_lost():
            # Not the trial's fault, and no MLflow call can succeed (a deleted store, a tracking
            # server that stopped answering): its retry is enqueued at once with the same
            # attempt (as an interruption's), and the worker stops.
            failed = private.fail(study, private.trial_id(trial))
            if failed is not None:
                layout.requeue(study, failed)
            worker.progress.finish("stopped: the MLflow store is gone")
            # A server that stopped answering (StoreUnreachable) keeps its own words.
            raise (e if isinstance(e, StoreLost) else StoreLost("the MLflow store was deleted while the trial ran")) \
                from None
        if isinstance(e, Abandoned) or not _owns(study, trial):
            # Paused past the heartbeat grace (SIGSTOP, a VM pause, a swap storm): another worker
            # failed this trial and runs its retry, which owns the cell's checkpoint and closed
            # this attempt's MLflow run KILLED. Nothing more is written for it.
            worker.progress.finish("given to another worker")
            worker.progress.warn(f"trial {trial.number} ({run_name}) was given to another worker while this one "
                                 "was paused (past the heartbeat grace); left to its retry, going on")
            if ctx.distributed:
                raise
            return True
        if ctx.distributed and lost_peer(e):  # a dead rank or node: no fault of the trial's (run KILLED)
            _give_back(layout, worker, study, trial)
            raise
        error = cut(redact(f"{type(e).__name__}: {e}"), 500)  # redacted first: a cut may split a secret
        trial.set_user_attr("error", error)
        study.tell(trial, state=TrialState.FAIL)
        worker.progress.finish(f"failed ({type(e).__name__})")
        worker.progress.warn(f"trial {trial.number} ({run_name}) failed (attempt {attrs.get('attempt', 1)} of "
                             f"{layout.attempts}): {error.splitlines()[0] if error else ''}")
        if ctx.distributed:
            # The other ranks may be waiting in a collective this rank will never join: the
            # group ends here, and the worker starts a new one (runners/study/group.py).
            raise
        return False
    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
        worker.progress.finish("pruned")
    else:
        tell_result(study, trial, result, worker.progress)
    remove_checkpoint(checkpoint)
    return True


def tell_result(study: optuna.Study, trial: optuna.Trial, result, progress) -> None:
    """Tell Optuna how a trained trial ended (also a packed one's, runners/study/pack.py)."""
    final = result.final
    diverged = result.status == "diverged"
    # The objective is the final validation error (never test); a diverged trial counts as
    # chance-or-worse so the search learns to avoid its region.
    value = final.get("val_error", final.get("train_error"))
    if diverged or value is None or not math.isfinite(value):
        value = 1.0
    trial.set_user_attr("diverged", diverged)
    trial.set_user_attr("epochs", result.epochs)
    for k in ("train_error", "val_error", "test_error"):
        if final.get(k) is not None and math.isfinite(final[k]):
            trial.set_user_attr(f"final_{k}", final[k])
    study.tell(trial, value)
    progress.finish("diverged" if diverged else "done",
                    {k: final.get(k) for k in ("train_error", "val_error", "test_error")})


def remove_checkpoint(checkpoint: str) -> None:
    """The weights live in MLflow now. A checkpoint set aside as unreadable stays, for inspection."""
    Path(checkpoint, "checkpoint.pt").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        Path(checkpoint).rmdir()


def owned(study: optuna.Study, trial: optuna.Trial, worker: Worker) -> Callable[[], None]:
    """The guard `train()` calls before it writes a result: raises Abandoned once the trial is no
    longer this worker's (failed as stale by another worker, which enqueued its retry), and
    StoreLost once the tracking store's file is gone."""
    def guard() -> None:
        if worker.store_lost():
            raise StoreLost("the MLflow store was deleted while the trial ran")
        if not _owns(study, trial):
            raise Abandoned(f"trial {trial.number} is no longer this worker's")
    return guard


def _owns(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether the trial is still RUNNING and claimed by this process, as the storage says now."""
    try:
        t = private.get_trial(study, private.trial_id(trial))
    except Exception:  # noqa: BLE001 - a storage that cannot answer: go on, the next check will tell
        return True
    return t.state == TrialState.RUNNING and t.user_attrs.get("worker") in (None, worker_id())


def _give_back(layout: Layout, worker: Worker, study: optuna.Study, trial: optuna.Trial) -> None:
    """An interrupted trial: fail it and enqueue its retry now (same attempt), so the rerun
    resumes it from its checkpoint."""
    failed = private.fail(study, private.trial_id(trial))
    if failed is not None:
        # A tracking server gone too: the retry is enqueued all the same (the rerun closes the run).
        with contextlib.suppress(StoreLost), server_calls(worker.mlflow.tracking_uri):
            parent.supersede(worker.mlflow, failed.user_attrs.get("mlflow_run_id"))
        layout.requeue(study, failed)


def lost_peer(error: Exception) -> bool:
    """Whether `error` says another process of the group is gone: torch.distributed's own error
    types (NCCL's watchdog, the c10d store), or gloo's transport error, a bare RuntimeError
    whose message names its source file."""
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and "gloo/transport" in str(error))


def follow_trial(spec, worker: Worker) -> None:
    """A rank other than 0 of a process group: train the trial rank 0 is starting (run_trial).

    It needs no Optuna or MLflow connection; a pruned trial returns, any other error propagates
    and ends the group (rank 0 then gives the trial back, and the worker starts a new group:
    runners/commands/worker.py)."""
    attrs = distributed.broadcast_object(None, distributed.current())
    with contextlib.suppress(optuna.TrialPruned):
        _fit(spec, attrs, worker, None, None)


def _fit(spec, attrs: dict, worker: Worker, trial: optuna.Trial | None, tracker,
         title: str = "", resumed: bool = False, guard: Callable[[], None] | None = None):
    """Train the cell `attrs` describes (every rank of a group calls this together; `trial` and
    `tracker` only on rank 0); search trials draw their hyperparameters from `trial`."""
    stage, v, seed = attrs["stage"], spec.variant(attrs["variant"]), attrs["seed"]
    if distributed.current().distributed:
        from optuna_integration import TorchDistributedTrial
        trial = TorchDistributedTrial(trial)
    if stage == SEARCH:
        hparams = {name: _suggest(trial, name, dist) for name, dist in spec.search.space.items()}
    else:
        hparams = attrs["hparams"]
    cfg = v.recipe(spec.train, seed=seed, device=worker.device, threads=worker.threads, **hparams)
    data = worker.data(stage)
    plan = Plan.of(cfg, len(data.train))
    worker.progress.start(title, plan.epochs, resumed,
                          cost=size_of(v.arch)["macs"] * plan.iterations * cfg.batch_size)

    def report(epoch: int, metrics: dict) -> None:  # only search trials prune; confirmations never do
        worker.progress.epoch(epoch, metrics)
        if stage == SEARCH and metrics.get("val_error") is not None:
            trial.report(metrics["val_error"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

    return train(v.arch, cfg, data, tracker=tracker, checkpoint_dir=attrs["checkpoint"],
                 on_epoch=report, model_name=v.model_name, guard=guard, foreign_checkpoint="set_aside")


def _suggest(trial: optuna.Trial, name: str, dist: dict):
    if "choices" in dist:
        return trial.suggest_categorical(name, dist["choices"])
    if SEARCHABLE[name] is int:
        return trial.suggest_int(name, int(dist["low"]), int(dist["high"]), log=bool(dist.get("log")))
    return trial.suggest_float(name, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log")))
