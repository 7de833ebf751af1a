"""Optuna storage for studies: open it, lock its setup, and find the trials of dead workers.

* No URL: a journal file under results/optuna/ (Optuna's `JournalFileBackend`), safe for several
  processes on one host and needing no server. It has no heartbeat, so a dead worker is found by
  its process id: every trial records `host:pid:start-time` of the worker that runs it.
* A database URL (postgresql://..., any SQLAlchemy URL Optuna supports): `RDBStorage` with
  heartbeats, so a worker that dies on any machine has its trial failed and retried by the
  survivors once its heartbeat is older than the grace period.

Setting a study up (creating it, enqueuing its grid, creating its MLflow parent run) happens under
a lock: a PostgreSQL advisory lock, or a file lock beside the journal or SQLite file, so N workers
started at once on N machines never enqueue a grid cell twice.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..database import advisory_lock, check_database
from ..errors import ConfigError, first_line, redact

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def is_database(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def open_storage(url: str, *, heartbeat: int = 30, on_stale: Callable | None = None):
    """An Optuna storage for `url` (a database URL or a journal file path), checked reachable."""
    if not is_database(url):
        path = Path(url.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        return JournalStorage(JournalFileBackend(str(path)))
    check_database(url, "the Optuna storage", "check the host, the credentials and that the database exists")
    lock = advisory_lock(url, "optuna-schema") if url.startswith("postgresql") else contextlib.nullcontext()
    try:
        with lock:  # N workers starting at once on an empty database create its tables once
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat, heartbeat_stale_trial_callback=on_stale)
    except Exception as e:  # noqa: BLE001 - driver errors vary; all mean "cannot use this store"
        raise ConfigError(f"cannot open the Optuna storage {redact(url)}: {first_line(e)}; "
                          "check the host, the credentials and that the database exists") from None


@contextlib.contextmanager
def setup_lock(url: str, study_name: str) -> Iterator[None]:
    """Serialise study setup across processes and machines."""
    if url.startswith("postgresql"):
        with advisory_lock(url, f"setup:{study_name}"):
            yield
        return
    if is_database(url) and not url.startswith("sqlite:///"):
        # Other databases: no portable lock. Setup is still idempotent, only not race-free.
        yield
        return
    path = Path(url.removeprefix("sqlite:///").removeprefix("file://"))
    lock = path.with_name(path.name + ".setup-lock")  # ".lock" is the journal's own lock file
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- who runs a trial, and is it still alive? ----------------------------------------------------
def worker_id() -> str:
    """host:pid:start-time; the start time tells a live worker from a reused pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        # Field 22 of /proc/<pid>/stat; the process name (field 2) may contain spaces.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def worker_is_dead(worker: str | None) -> bool:
    """True only when `worker` ran on this host and that process is gone."""
    if not worker:
        return False
    host, pid, start = worker.rsplit(":", 2)
    if host != socket.gethostname():
        return False  # another host: only heartbeats (database storage) can tell
    return _start_time(int(pid)) != start


def heartbeat_interval(storage) -> int | None:
    """Seconds between heartbeats, or None where the storage has none (journal files)."""
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get else None


def fail_stale_trials(study: optuna.Study, on_stale: Callable[[optuna.Study, FrozenTrial], None]) -> None:
    """Fail the RUNNING trials of dead workers and hand each to `on_stale` (exactly once)."""
    if heartbeat_interval(study._storage):
        optuna.storages.fail_stale_trials(study)  # calls the storage's stale-trial callback
        return
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not worker_is_dead(t.user_attrs.get("worker")):
            continue
        try:
            # Only the process whose state change succeeds handles the trial.
            if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                on_stale(study, study._storage.get_trial(t._trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass


class Heartbeat:
    """Record a trial's heartbeat on a database storage while it trains (no-op on a journal)."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        storage = study._storage
        self._enabled = bool(heartbeat_interval(storage))
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        interval = self._storage.get_heartbeat_interval()
        while True:
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception:  # noqa: BLE001 - a missed beat must not kill training
                pass
            if self._stop.wait(interval):
                return

    def __enter__(self) -> "Heartbeat":
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._enabled:
            self._stop.set()
            self._thread.join()
