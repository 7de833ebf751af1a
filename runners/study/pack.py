"""Packed cells: a study worker claims up to K waiting cells that pack and trains them as one step.

Which cells pack: confirmation cells whose models have the same parameters and whose recipes
share everything but the per-model values (runners/train/packed.py `pack_key`): the seeds of a
variant, and a plain net with its option-A twin. Search trials never pack (TPE suggests their
recipe as they start).

Each cell stays what it is alone: it is claimed with Optuna's own compare-and-set (the claim of
runners/study/layout.py, one trial at a time, so no cell runs twice), heartbeats as its own trial,
has its own MLflow run (curves, tags, and `pack`/`pack_id`), its own checkpoint directory (each
epoch) and its own Optuna result. An interrupt (Ctrl-C, SIGTERM) gives every cell of the pack back
to the queue; a kill -9 leaves them RUNNING until the next run fails and requeues them as a dead
worker's (runners/study/storage.py), and their retries, claimed together again, resume from
their checkpoints (a member behind the others catches up first).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from models.spec import ArchSpec

from ..errors import cut, redact
from ..signals import Terminated
from ..tracking.naming import run_name as arch_run_name
from ..tracking.tracker import Abandoned, StoreLost, Tracker, tracked_run
from ..train.execution import resolve_device
from ..train.packed import Member, pack_key, template, train_packed
from ..train.schedule import Plan
from . import optuna_private as private
from .layout import CONFIRM, Layout
from .storage import Heartbeat, worker_id
from .trial import Worker, _give_back, _owns, owned, remove_checkpoint, run_trial, tell_result

AUTO_PACKS = (1, 2, 4, 8, 16)  # the sizes `resources.pack: auto` measures


def pack_size(spec, device: str, data) -> int:
    """The K of `resources.pack`: as given, or for auto, on a CUDA device, the K recommended by a
    measurement of the study's first variant on this GPU (its batch, precision and compile mode):
    one recorded in results/rates.json (runners/train/rates.py) if there is one, else measured now
    (`ablate bench --pack`'s measurement, some tens of seconds) and recorded; 1 on a CPU, where
    packing measured slower (README, Performance)."""
    pack = spec.resources.pack
    if pack != "auto":
        return pack
    dev = resolve_device(device)
    if dev.type != "cuda":
        return 1
    from ..train import rates
    from ..train.bench import bench_packed, device_name
    v = spec.variants[0]
    cfg = v.recipe(spec.train)
    recorded = recorded_pack(rates.load_or_none(), device_name(dev), v.arch, cfg)
    if recorded is not None:
        return recorded
    r = bench_packed(v.arch, data, device=dev, packs=AUTO_PACKS, batch_size=cfg.batch_size, steps=20, repeats=3,
                     precision=cfg.precision, compile=cfg.compile, compile_mode=cfg.compile_mode)
    rates.record([r])
    return r["recommended"]


def recorded_pack(entries: list[dict], device_name: str, arch, cfg) -> int | None:
    """The recommended K of a recorded measurement of `arch` (or its plain/option-A twin) at cfg's
    batch, precision and compile mode on this device; None if there is none."""
    mode = cfg.compile_mode if cfg.compile else "eager"
    for e in reversed(entries):
        if (e["device_name"], e["batch_size"], e["precision"], e["mode"]) == (device_name, cfg.batch_size,
                                                                            cfg.precision, mode) \
                and template(ArchSpec(**e["model"])).as_dict() == template(arch).as_dict() \
                and e.get("recommended"):
            return e["recommended"]
    return None


def cell_key(spec, attrs: dict) -> tuple | None:
    """What a cell packs by; None for a cell that runs alone (search trials, dropout shortcuts)."""
    if attrs.get("stage") != CONFIRM:
        return None
    v = spec.variant(attrs["variant"])
    cfg = v.recipe(spec.train, seed=attrs["seed"], **attrs.get("hparams", {}))
    return pack_key(v.arch, cfg, spec.data_of(CONFIRM))


def claim_pack(layout: Layout, studies: list[optuna.Study], k: int) -> list[tuple[optuna.Study, optuna.Trial]]:
    """Claim a waiting trial as `Layout.claim` does, then up to k - 1 more waiting cells of its
    study that pack with it (resumable ones first), each by its own compare-and-set."""
    first = layout.claim(studies)
    if first is None:
        return []
    study, trial = first
    key = cell_key(layout.spec, private.get_trial(study, private.trial_id(trial)).user_attrs) if k > 1 else None
    claimed = [first]
    if key is None:
        return claimed
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for t in sorted(waiting, key=lambda t: (not layout.resumable(t), t.number)):
        if len(claimed) == k:
            break
        if cell_key(layout.spec, t.user_attrs) != key:
            continue
        got = private.claim(study, t)
        if got is not None:
            got.set_user_attr("worker", worker_id())
            claimed.append((study, got))
    return claimed


@dataclass
class Cell:
    study: optuna.Study
    trial: optuna.Trial
    attrs: dict
    run_name: str
    contexts: contextlib.ExitStack | None = None  # its heartbeat and MLflow run
    abandoned: bool = False  # given to another worker while this one was paused


def run_pack(layout: Layout, worker: Worker, claimed: list[tuple[optuna.Study, optuna.Trial]]) -> int:
    """Train the claimed cells as one pack (one cell: `run_trial`); how many failed."""
    if len(claimed) == 1:
        return int(not run_trial(layout, worker, *claimed[0]))
    spec = layout.spec
    cells = []
    for study, trial in claimed:
        attrs = dict(private.get_trial(study, private.trial_id(trial)).user_attrs)
        attrs["checkpoint"] = str(layout.checkpoint_dir(attrs["checkpoint"]))  # recorded relative to the root
        cells.append(Cell(study, trial, attrs, arch_run_name(spec.variant(attrs["variant"]).arch, attrs["seed"])))
    data = worker.data(CONFIRM)
    title = f"pack of {len(cells)}: " + ", ".join(c.run_name for c in cells)
    members = []
    try:
        with contextlib.ExitStack() as stack:
            for c in cells:
                v, trial = spec.variant(c.attrs["variant"]), c.trial
                trial.set_user_attr("resumed", (Path(c.attrs["checkpoint"]) / "checkpoint.pt").exists())
                tags = {"ablation": spec.name, "study": spec.name, "stage": CONFIRM, "variant": v.key,
                        "trial": trial.number, "optuna_study": c.study.study_name, "worker": worker_id(),
                        "attempt": c.attrs.get("attempt", 1),
                        **({"retry_of": c.attrs["retry_of"]} if "retry_of" in c.attrs else {})}
                tracker = Tracker.start(worker.mlflow, spec.name, c.run_name, tags=tags,
                                        parent_run_id=worker.parent_run_id)
                trial.set_user_attr("mlflow_run_id", tracker.run_id)
                # Each cell's heartbeat and run end on their own (an abandoned one is left as is).
                c.contexts = stack.enter_context(contextlib.ExitStack())
                c.contexts.enter_context(Heartbeat(c.study, private.trial_id(trial)))
                c.contexts.enter_context(tracked_run(tracker))
                cfg = v.recipe(spec.train, seed=c.attrs["seed"], device=worker.device, threads=worker.threads,
                               **c.attrs["hparams"])
                members.append(Member(v.arch, cfg, tracker, c.attrs["checkpoint"], model_name=v.model_name,
                                      guard=owned(c.study, trial, worker)))
            members[0].on_epoch = worker.progress.epoch  # the pack's progress, shown by its first member
            worker.progress.start(title, Plan.of(members[0].cfg, len(data.train)).epochs,
                                  any((Path(c.attrs["checkpoint"]) / "checkpoint.pt").exists() for c in cells))
            outcomes = train_packed(members, data)
            lost = next((o for o in outcomes if isinstance(o, StoreLost)), None)
            if lost is not None or worker.store_lost():  # a server that stopped answering keeps its own words
                raise lost or StoreLost("the MLflow store was deleted while the pack ran")
            for c, outcome in zip(cells, outcomes):
                c.abandoned = isinstance(outcome, Abandoned) or not _owns(c.study, c.trial)
                if c.abandoned:  # its run is the retry's to end: tracked_run leaves it
                    c.contexts.__exit__(Abandoned, Abandoned("retried elsewhere"), None)
    except (KeyboardInterrupt, Terminated):
        for c in cells:
            _give_back(layout, worker, c.study, c.trial)
        raise
    except StoreLost:
        # No MLflow call can succeed: every cell's retry is enqueued now with the same attempt,
        # as run_trial does, and the worker stops (runners/study/runner.py).
        for c in cells:
            failed = private.fail(c.study, private.trial_id(c.trial))
            if failed is not None:
                layout.requeue(c.study, failed)
        raise
    except Exception as e:  # noqa: BLE001 - a broken pack fails its cells' attempts; the study goes on
        for c in cells:
            fail(c, e, worker)
        return len(cells)
    failed = 0
    for c, outcome in zip(cells, outcomes):
        if c.abandoned:
            # Retried by another worker while this one was paused: its run and checkpoint are the
            # retry's now; nothing more is written for it here.
            worker.progress.warn(f"trial {c.trial.number} ({c.run_name}) was given to another worker while this "
                                 "one was paused; left to its retry, going on")
            continue
        if isinstance(outcome, Exception):
            fail(c, outcome, worker)
            failed += 1
            continue
        tell_result(c.study, c.trial, outcome, worker.progress)
        remove_checkpoint(c.attrs["checkpoint"])
    return failed


def fail(cell: Cell, error: Exception, worker: Worker) -> None:
    text = cut(redact(f"{type(error).__name__}: {error}"), 500)  # redacted first: a cut may split a secret
    cell.trial.set_user_attr("error", text)
    cell.study.tell(cell.trial, state=TrialState.FAIL)
    worker.progress.warn(f"trial {cell.trial.number} ({cell.run_name}) failed in its pack: {text.splitlines()[0]}")
