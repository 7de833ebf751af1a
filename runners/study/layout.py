"""A study's layout in Optuna, and the moves on it: set up, claim, requeue, retry, done.

Layout (one storage, see runners/study/storage.py):
* study `<name>`: the confirmation trials, one per (variant, seed) grid cell, enqueued once. They
  are never pruned and are the only trials the figures use. A cell may hold several trials: a
  retry is a new trial with the cell's attributes and `retry_of` = the number of the one it
  replaces; the cell's latest trial is its state.
* with `search:`, one study `<name>:search:<variant>` per variant, holding exactly
  `trials_per_variant` enqueued trials that TPE fills in; the median pruner compares a trial only
  with its own variant's. When a variant's search is over, its cells are enqueued at its best
  hyperparameters (selected on the validation split).

Attempts. A trial that raised is a failed attempt (`error` set). Its cell is retried on the next
`ablate run` or `worker`, up to the spec's `attempts` (counted in the trial's `attempt`);
`--retry-failed` starts the count again. An interrupted or dead worker's trial is not a failed
attempt: it is retried at once with the same attempt number and resumes from its checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError, redact
from . import optuna_private as private
from .spec import StudySpec, Variant
from .storage import setup_lock, worker_id

CONFIRM, SEARCH = "confirm", "search"
CELL_ATTRS = ("stage", "variant", "seed", "cell", "hparams", "checkpoint", "attempt")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
ACTIVE = (TrialState.RUNNING, TrialState.WAITING)


class Layout:
    def __init__(self, spec: StudySpec, storage, storage_url: str, checkpoint_root: Path,
                 attempts: int | None = None) -> None:
        self.spec, self.storage, self.storage_url = spec, storage, storage_url
        self.checkpoint_root = checkpoint_root
        self.attempts = attempts or spec.attempts
        self._studies: dict[str, optuna.Study] = {}

    # -- studies -----------------------------------------------------------------------------
    def _study(self, name: str, search: bool = False, create: bool = False) -> optuna.Study:
        """The study `name`, loaded once per process. Only setup creates studies: on a journal,
        even `create_study(load_if_exists=True)` of an existing study appends a log record."""
        if name not in self._studies or create:
            pruner = optuna.pruners.NopPruner()
            if search and self.spec.search.pruner == "median":
                pruner = optuna.pruners.MedianPruner(n_startup_trials=self.spec.search.startup_trials)
            kw = dict(study_name=name, storage=self.storage, pruner=pruner,
                      sampler=optuna.samplers.TPESampler() if search else None)
            self._studies[name] = (optuna.create_study(direction="minimize", load_if_exists=True, **kw)
                                   if create else optuna.load_study(**kw))
        return self._studies[name]

    def main(self, create: bool = False) -> optuna.Study:
        return self._study(self.spec.name, create=create)

    def search_study(self, variant: Variant, create: bool = False) -> optuna.Study:
        return self._study(f"{self.spec.name}:search:{variant.key}", search=True, create=create)

    def all_studies(self) -> list[optuna.Study]:
        studies = [self.main()]
        if self.spec.search:
            studies += [self.search_study(v) for v in self.spec.variants]
        return studies

    def exists(self) -> bool:
        return any(s.study_name == self.spec.name for s in optuna.get_all_study_summaries(self.storage))

    def lock(self):
        return setup_lock(self.storage_url, self.spec.name)

    # -- setup (idempotent; the caller holds `lock()`) ----------------------------------------
    def setup(self, retry_failed: bool = False) -> optuna.Study:
        """Create the study (or check it is the same spec), enqueue its grid or its searches,
        and retry failed cells within their attempts; returns the main study."""
        main = self.main(create=True)
        fingerprint = main.user_attrs.get("fingerprint")
        if fingerprint not in (None, self.spec.fingerprint):
            raise ConfigError(f"study {self.spec.name!r} already exists in {redact(self.storage_url)} with a "
                              "different spec; rerun with the same spec and --set values, or rename the study")
        if fingerprint is None:
            main.set_user_attr("fingerprint", self.spec.fingerprint)
            main.set_user_attr("spec", self.spec.resolved)
        if self.spec.search is None:
            for v in self.spec.variants:
                self._enqueue_cells(main, v, {})
        else:
            for v in self.spec.variants:
                study = self.search_study(v, create=True)
                originals = [t for t in study.get_trials(deepcopy=False) if "retry_of" not in t.user_attrs]
                for _ in range(self.spec.search.trials_per_variant - len(originals)):
                    study.enqueue_trial({}, user_attrs={"stage": SEARCH, "variant": v.key,
                                                        "seed": self.spec.seeds[0]})
        self._retry_cells(main, reset=retry_failed)
        return main

    def _enqueue_cells(self, main: optuna.Study, v: Variant, hparams: dict) -> None:
        present = {t.user_attrs.get("cell") for t in main.get_trials(deepcopy=False)}
        for seed in self.spec.seeds:
            cell = f"{v.key}/seed={seed}"
            if cell not in present:
                main.enqueue_trial({}, user_attrs={
                    "stage": CONFIRM, "variant": v.key, "seed": seed, "cell": cell, "hparams": hparams,
                    "checkpoint": f"{CONFIRM}/{v.key}/seed{seed}", "attempt": 1})

    def latest_per_cell(self, main: optuna.Study | None = None) -> dict[str, FrozenTrial]:
        latest: dict[str, FrozenTrial] = {}
        for t in (main or self.main()).get_trials(deepcopy=False):
            cell = t.user_attrs.get("cell")
            if cell is not None and (cell not in latest or t.number > latest[cell].number):
                latest[cell] = t
        return latest

    def _retry_cells(self, main: optuna.Study, reset: bool) -> None:
        """Enqueue a retry of each cell whose latest trial failed, within its attempts."""
        for t in self.latest_per_cell(main).values():
            if t.state != TrialState.FAIL:
                continue
            attempt = t.user_attrs.get("attempt", 1)
            if "error" not in t.user_attrs:
                # Interrupted, and its process died before it enqueued the retry.
                self._enqueue_retry(main, t, attempt)
            elif reset or attempt < self.attempts:
                self._enqueue_retry(main, t, 1 if reset else attempt + 1)

    def exhausted(self) -> list[FrozenTrial]:
        """The cells that failed `attempts` times: their latest (failed) trial."""
        return [t for t in self.latest_per_cell().values()
                if t.state == TrialState.FAIL and "error" in t.user_attrs
                and t.user_attrs.get("attempt", 1) >= self.attempts]

    def enqueue_ready_cells(self) -> bool:
        """Enqueue the cells of each variant whose search is over; True if any were added."""
        main = self.main()
        present = {t.user_attrs.get("variant") for t in main.get_trials(deepcopy=False)}
        added = False
        for v in self.spec.variants:
            if v.key in present:
                continue
            trials = self.search_study(v).get_trials(deepcopy=False)
            if not trials or any(t.state not in FINISHED for t in trials):
                continue
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            if not complete:
                continue  # every trial failed: `ablate status` shows it; nothing to confirm
            best = min(complete, key=lambda t: t.value)
            with self.lock():
                main.set_user_attr(f"best:{v.key}", {"trial": best.number, "value": best.value,
                                                      "params": best.params})
                self._enqueue_cells(main, v, best.params)
            added = True
        return added

    # -- claiming and requeuing --------------------------------------------------------------
    def claim(self, studies: list[optuna.Study]) -> tuple[optuna.Study, optuna.Trial] | None:
        """Claim a waiting trial: confirmation cells first (they are the results), and among
        them those with a checkpoint to resume (an interrupted attempt's work) before fresh ones."""
        for study in studies:
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            for t in sorted(waiting, key=lambda t: (not self.resumable(t), t.number)):
                trial = private.claim(study, t)
                if trial is not None:
                    trial.set_user_attr("worker", worker_id())  # how a dead worker's trial is found
                    return study, trial
        return None

    def requeue(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Enqueue the retry of an interrupted or dead attempt (same cell, checkpoint and attempt)."""
        with self.lock():
            self._enqueue_retry(study, trial, trial.user_attrs.get("attempt", 1))

    def _enqueue_retry(self, study: optuna.Study, trial: FrozenTrial, attempt: int) -> None:
        if any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
            return  # another process (a setup, or the one that failed it) enqueued it already
        attrs = {k: trial.user_attrs[k] for k in CELL_ATTRS if k in trial.user_attrs}
        study.enqueue_trial(trial.params, user_attrs={**attrs, "attempt": attempt, "retry_of": trial.number})

    def trials_by_number(self) -> dict:
        """Every trial of the study's Optuna studies, keyed (optuna study name, trial number)."""
        return {(s.study_name, t.number): t for s in self.all_studies() for t in s.get_trials(deepcopy=False)}

    def found(self) -> dict[str, int]:
        """What a rerun finds, per cell of the grid: finished, interrupted (waiting, with a
        checkpoint to resume), waiting, running (elsewhere), and failed out of attempts."""
        counts = dict.fromkeys(("finished", "interrupted", "waiting", "running", "failed"), 0)
        exhausted = {t.number for t in self.exhausted()}
        for t in self.latest_per_cell().values():
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                counts["finished"] += 1
            elif t.state == TrialState.WAITING:
                counts["interrupted" if self.resumable(t) else "waiting"] += 1
            elif t.state == TrialState.RUNNING:
                counts["running"] += 1
            elif t.number in exhausted:
                counts["failed"] += 1
        return counts

    def is_done(self) -> bool:
        studies = self.all_studies()
        if any(s.get_trials(deepcopy=False, states=ACTIVE) for s in studies):
            return False
        if not self.spec.search:
            return True
        present = {t.user_attrs.get("variant") for t in studies[0].get_trials(deepcopy=False)}
        return all(v.key in present or not any(t.state == TrialState.COMPLETE for t in self.search_study(v).trials)
                   for v in self.spec.variants)

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint_dir(self, recorded: str) -> Path:
        """A trial's checkpoint folder. Recorded relative to the checkpoint root, so a results/
        copied or moved elsewhere resumes from its own checkpoints, never the original's;
        journals from before record absolute paths, which are kept."""
        return self.checkpoint_root / recorded

    def resumable(self, trial: FrozenTrial) -> bool:
        """Whether the trial's cell has a checkpoint to resume from (an interrupted attempt's work)."""
        folder = trial.user_attrs.get("checkpoint")
        return bool(folder) and (self.checkpoint_dir(folder) / "checkpoint.pt").exists()
