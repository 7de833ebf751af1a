"""Ablation studies under Optuna: one process's worker loop over a study's trials.

The parts, by job: runners/study/layout.py (where trials live in Optuna; set up, claim, requeue,
retry), trial.py (run one trial), parent.py (the study's MLflow parent run), status.py (progress,
read from Optuna alone), storage.py (the Optuna storage and its locks). This module connects the
stores, checked before either is written, and loops.

Workers claim WAITING trials atomically (a compare-and-set on the trial state), so any number of
them, on any number of machines, run each trial once. A trial whose worker died is failed and
re-enqueued with the same cell and checkpoint directory, so its retry resumes from the last epoch.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path

from ..database import canonical_url, check_database
from ..errors import ConfigError, cut, redact
from ..paths import STORAGE_ENV, default_storage, default_tracking_uri, journal_path, results_dir, sqlite_path
from ..train import distributed
from ..train.data import load_dataset
from ..train.execution import resolve_device
from ..tracking.store import client, store_identity
from ..tracking.tracker import StoreLost, StoreUnreachable, server_calls, unanswered
from . import parent
from .layout import ACTIVE, Layout
from .pack import claim_pack, pack_size, run_pack
from .progress import NoProgress
from .spec import StudySpec, load_spec
from .storage import fail_stale_trials, is_database, open_storage
from .trial import Worker, follow_trial, run_trial

_log = logging.getLogger(__name__)
# What rank 0 of a process group tells the other ranks, in StudyRunner.work() and follow().
TRIAL, WAIT, DONE = "trial", "wait", "done"


def check_writable(path: Path, what: str) -> None:
    """ConfigError unless a file can be created at `path` (a directory, existing or not);
    checked by creating and removing a temporary directory in its nearest existing ancestor."""
    base = path.expanduser().absolute()
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"{what} {path} is not usable: {base} is a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(dir=base, prefix=".ablate-write-check-"))
    except OSError as e:
        raise ConfigError(f"{what} {path} is not writable ({e.strerror or type(e).__name__} in {base}); "
                          "choose a directory you can write to") from None


class StudyRunner:
    """One process's view of a study: its stores, its device, and the trial loop.

    Construction checks everything and writes nothing; `open()` creates the stores' files."""

    def __init__(self, spec: StudySpec, *, storage: str | None = None, tracking_uri: str | None = None,
                 device: str = "auto", threads: int | None = None, checkpoint_root: str | None = None,
                 heartbeat: int = 30, poll: float = 2.0, attempts: int | None = None) -> None:
        self.spec = spec
        self.storage_url = canonical_url(storage or default_storage(spec.name))
        self.tracking_uri = canonical_url(tracking_uri or default_tracking_uri())
        self.device, self.threads, self.poll, self.heartbeat = device, threads, poll, heartbeat
        if attempts is not None and attempts < 1:
            raise ConfigError(f"--attempts must be at least 1, got {attempts}")
        self.attempts = attempts
        self.checkpoint_root = Path(checkpoint_root or results_dir() / "checkpoints") / spec.name
        check_writable(self.checkpoint_root, "the checkpoint directory")
        if is_database(self.storage_url):
            check_database(self.storage_url, "the Optuna storage",
                           "check the host, the credentials and that the database exists")
        else:
            check_writable(journal_path(self.storage_url).parent, "the Optuna journal's directory")
        if sqlite_path(self.tracking_uri) is not None:
            check_writable(sqlite_path(self.tracking_uri).parent, "the MLflow store's directory")
        self.mlflow = None
        self._store: tuple[int, int] | None = None  # the SQLite store's identity (store_identity)
        self.lost: StoreLost | None = None  # how the MLflow store went away while this process worked
        self.layout: Layout | None = None
        self.parent_run_id: str | None = None
        self._datasets: dict = {}  # DataConfig -> loaded Dataset
        self.progress = NoProgress()  # the command sets a StudyProgress that prints

    def dataset(self, device: str | None = None, stage: str = "confirm"):
        """The data of a stage's trials, loaded once per worker onto its device."""
        cfg = self.spec.data_of(stage)
        if cfg not in self._datasets:
            self._datasets[cfg] = load_dataset(cfg, resolve_device(device or self.device))
        return self._datasets[cfg]

    def open(self) -> Layout:
        """Connect both stores (creating their files); a store that fails leaves no empty file."""
        db = sqlite_path(self.tracking_uri)
        created = db is not None and not db.exists()
        try:
            self.mlflow = client(self.tracking_uri)
            self._store = store_identity(self.tracking_uri)
        except BaseException:
            if created and db.exists():
                db.unlink()  # e.g. a full disk: an empty or half-made store is worse than none
            raise
        storage = open_storage(self.storage_url, heartbeat=self.heartbeat, on_stale=self._on_stale)
        self.layout = Layout(self.spec, storage, self.storage_url, self.checkpoint_root, self.attempts)
        return self.layout

    def setup(self, retry_failed: bool = False) -> None:
        """Under the study's setup lock, once: the Optuna layout and the MLflow parent run."""
        with self._stops_when_store_lost(), self.layout.lock():
            main = self.layout.setup(retry_failed=retry_failed)
            self.parent_run_id = parent.ensure_parent(self.mlflow, self.spec, main, redact(self.storage_url))
        with self._stops_when_store_lost():
            for s in self.layout.all_studies():  # dead workers' trials first, so their runs are closed once
                fail_stale_trials(s, self._on_stale)
            parent.close_orphans(self.mlflow, self.spec.name, self.layout.trials_by_number(), self.parent_run_id)

    def found_line(self) -> str | None:
        """One line on what a rerun found (None for a study that has just been set up): how many
        cells finished, how many interrupted ones resume first, how many wait, run elsewhere, or
        failed out of their attempts."""
        n = self.layout.found()
        if not (n["finished"] or n["interrupted"] or n["failed"] or n["running"]):
            return None
        parts = [f"{n['finished']} finished"]
        if n["interrupted"]:
            parts.append(f"{n['interrupted']} interrupted, resuming first")
        parts.append(f"{n['waiting']} waiting")
        if n["running"]:
            parts.append(f"{n['running']} running elsewhere")
        if n["failed"]:
            parts.append(f"{n['failed']} failed and out of attempts (--retry-failed tries them again)")
        return f"found {self.spec.name}: " + ", ".join(parts)

    @property
    def storage_label(self) -> str:
        """The Optuna storage as it may be shown: its password masked."""
        return redact(self.storage_url)

    @property
    def tracking_label(self) -> str:
        return redact(self.tracking_uri)

    def reopen_parent(self) -> None:
        with self._stops_when_store_lost():
            parent.reopen_parent(self.mlflow, self.parent_run_id)

    def end_parent(self, status: str) -> None:
        # Under the setup lock: two workers that finish together would otherwise both publish the
        # study's results, and MLflow's SQLite store refuses the second experiment tag insert
        # (UNIQUE constraint failed: experiment_tags), a flake seen in test_two_workers_on_one_host.
        with self.layout.lock():
            parent.end_parent(self.mlflow, self.parent_run_id, self.spec.name, status,
                              done=status == "FINISHED" and self.layout.is_done())

    def store_lost(self) -> bool:
        """Whether the MLflow store is gone: its tracking server stopped answering this process, or
        its SQLite file was deleted (or replaced) since `open()`."""
        return self.lost is not None or (self._store is not None and store_identity(self.tracking_uri) != self._store)

    @contextlib.contextmanager
    def _stops_when_store_lost(self):
        """The block's MLflow calls, stopped in one line (ConfigError, exit 2) when the store goes
        away: a tracking server that stopped answering (tracker.server_calls), a deleted SQLite file."""
        try:
            with server_calls(self.tracking_uri):
                yield
        except StoreLost as e:
            raise self._stop_store_lost(e) from None

    def _stop_store_lost(self, lost: StoreLost) -> ConfigError:
        self.lost = lost
        if isinstance(lost, StoreUnreachable):
            return ConfigError(f"{lost} while the study ran; no attempt was used and Optuna keeps every result: "
                               "restart the server (on the same backend store) and rerun the same command, "
                               "which resumes the cells")
        return ConfigError(f"the MLflow store {sqlite_path(self.tracking_uri)} was deleted while the study ran; "
                           "no attempt was used and Optuna keeps every result: rerun the same command to go on "
                           "with a new store")

    def close_parent(self, status: str) -> None:
        """`end_parent` on the way out of a command: a failure to close is logged, never raised
        over the error that got us here."""
        if self.store_lost():
            return  # nothing to close in a store that is gone; opening it would make an empty one
        try:
            self.end_parent(status)
        except Exception as e:  # noqa: BLE001 - never mask the error that got us here
            if unanswered(e, self.tracking_uri):  # the server went away (its workers have said so)
                self.lost = StoreUnreachable(self.tracking_uri)
                return
            _log.warning("could not close the MLflow parent run: %s", redact(e))

    def _on_stale(self, study, trial) -> None:
        """A dead worker's trial: close its MLflow run, enqueue its retry (same cell, checkpoint). The
        retry is enqueued even when the tracking server is gone (the rerun closes the run): Optuna
        has failed the trial already, and a failed trial without its retry would cost an attempt."""
        with contextlib.suppress(StoreLost), server_calls(self.tracking_uri):
            parent.supersede(self.mlflow, trial.user_attrs.get("mlflow_run_id"))
        self.layout.requeue(study, trial)

    def work(self) -> int:
        """Run trials until none are left; exit status 1 if a trial failed or a cell ran out of attempts.

        In a process group (resources.gpus_per_trial > 1) this runs on rank 0, which alone talks
        to the stores; it tells the other ranks, in `follow()`, what comes next."""
        layout, failed, ctx = self.layout, 0, distributed.current()
        worker = Worker(self.mlflow, self.parent_run_id, lambda stage: self.dataset(stage=stage),
                        self.device, self.threads, self.progress, self.store_lost)
        # -- packed cells (runners/study/pack.py): up to `pack` cells claimed and trained together --
        pack = pack_size(self.spec, self.device, self.dataset()) if self.spec.resources.pack != 1 else 1
        with self._stops_when_store_lost():  # a trial's retry is enqueued (run_trial, run_pack) first
            while True:
                if self.store_lost():
                    raise StoreLost("the MLflow store was deleted")
                studies = layout.all_studies()
                for s in studies:
                    fail_stale_trials(s, self._on_stale)
                if pack > 1 and (group := claim_pack(layout, studies, pack)):
                    failed += run_pack(layout, worker, group)
                    continue
                # -- end packed cells --
                claimed = layout.claim(studies)
                if claimed is not None:
                    distributed.broadcast_object(TRIAL, ctx)
                    failed += not run_trial(layout, worker, *claimed)
                    continue
                if self.spec.search and layout.enqueue_ready_cells():
                    continue
                if any(s.get_trials(deepcopy=False, states=ACTIVE) for s in studies):
                    # Others are still training (a dead one will be retried here). The ranks hear
                    # from rank 0 at every poll, so no collective outwaits its timeout.
                    distributed.broadcast_object(WAIT, ctx)
                    time.sleep(self.poll)
                    continue
                break
            distributed.broadcast_object(DONE, ctx)
            self.end_parent("FINISHED")
        return 1 if failed or layout.exhausted() else 0

    def follow(self) -> int:
        """A rank other than 0 of a process group: train each trial rank 0 starts, until it is done.
        It connects no store (construction checked them; `dataset()` loads the data)."""
        worker = Worker(None, "", lambda stage: self.dataset(stage=stage), self.device, self.threads)
        while (message := distributed.broadcast_object(None, distributed.current())) != DONE:
            if message == TRIAL:
                follow_trial(self.spec, worker)
        return 0

    def exhausted(self) -> list[str]:
        """One line per cell that used up its attempts, with its last error."""
        return [f"{t.user_attrs['cell']}: failed {t.user_attrs.get('attempt', 1)} time(s), last: "
                f"{cut(t.user_attrs.get('error', '?').splitlines()[0], 200)}" for t in self.layout.exhausted()]


def store_environment(storage: str, tracking_uri: str) -> dict[str, str]:
    """The environment that hands a child process both stores: URLs may hold passwords, and a
    process's environment, unlike its command line, is readable only by its own user."""
    return {STORAGE_ENV: storage, "MLFLOW_TRACKING_URI": tracking_uri}


def without_store_options(argv: list[str]) -> list[str]:
    """`argv` without --storage and --tracking-uri (and their values), which `store_environment`
    hands on instead."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--storage", "--tracking-uri"):
            skip = True
        elif not a.startswith(("--storage=", "--tracking-uri=")):
            out.append(a)
    return out


def make_runner(spec_path: str, overrides: list[str], *, storage: str | None = None, tracking_uri: str | None = None,
                **options) -> StudyRunner:
    """The runner of the spec at `spec_path` with `--set` overrides; store URLs as users write them
    (a raw password is percent-encoded first, runners/database.py). Without `storage`, the one
    the environment hands ($ABLATE_STORAGE), else the study's journal; without `tracking_uri`,
    $MLFLOW_TRACKING_URI, else results/mlflow.db (runners/paths.py)."""
    spec = load_spec(spec_path, overrides)
    return StudyRunner(spec, storage=storage and canonical_url(storage),
                       tracking_uri=tracking_uri and canonical_url(tracking_uri), **options)
