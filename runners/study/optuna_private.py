"""The Optuna internals the study runner relies on, all here so an Optuna upgrade is one file to check.

Checked against Optuna 4.2 and 5.0.0 (the installed version when this was written; pyproject asks
for >= 4.2). Each is used because the public API has no equivalent:
* `study._storage`: the storage behind a loaded study. `Study` exposes no storage, and the
  operations below are storage operations.
* `FrozenTrial._trial_id`: the storage's key of a trial (`number` is only unique per study).
* `storage.set_trial_state_values(trial_id, state)`: a compare-and-set of a trial's state that
  returns whether this call won. It is how a worker claims a WAITING trial of its choosing
  (`study.ask()` takes whichever waiting trial comes first, and creates a new trial when none
  is waiting), and how exactly one process fails (and so requeues) the trial of a dead worker
  or of an interrupted attempt (`study.tell` cannot say who won a race).
* `optuna.trial.Trial(study, trial_id)`: a live trial handle for a trial claimed that way
  (the constructor is public but undocumented as such).
* `storage.get_trial(trial_id)`: one trial's current state and attributes without loading every
  trial of the study.
* `storage.get_heartbeat_interval()` / `record_heartbeat(trial_id)`: RDBStorage's heartbeat,
  recorded by the runner's own thread while `train()` runs in the main thread.
"""
from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState


def storage_of(study: optuna.Study):
    return study._storage


def trial_id(trial: FrozenTrial | optuna.Trial) -> int:
    return trial._trial_id


def get_trial(study: optuna.Study, tid: int) -> FrozenTrial:
    return study._storage.get_trial(tid)


def claim(study: optuna.Study, waiting: FrozenTrial) -> optuna.Trial | None:
    """Move a WAITING trial to RUNNING for this process; None if another process got it first."""
    try:
        if study._storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
            return optuna.trial.Trial(study, waiting._trial_id)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass
    return None


def fail(study: optuna.Study, tid: int) -> FrozenTrial | None:
    """Fail a RUNNING trial (any process's); the trial if this call did it, None if another did."""
    try:
        if study._storage.set_trial_state_values(tid, state=TrialState.FAIL):
            return study._storage.get_trial(tid)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass
    return None


def heartbeat_interval(storage) -> int | None:
    """Seconds between heartbeats, or None where the storage has none (journal files)."""
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get else None


def record_heartbeat(storage, tid: int) -> None:
    storage.record_heartbeat(tid)
