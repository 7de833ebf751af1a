"""A study's MLflow side beyond its trials' own runs: the parent run, and the runs of dead attempts.

One parent run per study (`stage=study`, the spec as `spec.json`): RUNNING while `ablate run`
works, FINISHED when every trial has ended, KILLED or FAILED when the run stops before that. Its
id is kept in the Optuna study (`mlflow_parent_run_id`); if the MLflow store lost it (a deleted
`mlflow.db`), a new parent is created and the study goes on. These functions take what they act
on (the client, the spec, the Optuna study); the runner (runners/study/runner.py) calls them.
"""
from __future__ import annotations

import logging

from mlflow.exceptions import MlflowException

from ..tracking.naming import fmt, git_commit
from ..tracking.store import mark_superseded
from ..tracking.tracker import Tracker
from ..tracking.view import publish_comparison_view, varying_axes
from .publish import refresh_study_results
from .storage import worker_is_dead

_log = logging.getLogger(__name__)
PARENT_ATTR = "mlflow_parent_run_id"


def run_status(mlflow, run_id: str | None) -> str | None:
    """The run's status, or None when the store has no such run."""
    if not run_id:
        return None
    try:
        return mlflow.get_run(run_id).info.status
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def ensure_parent(mlflow, spec, main, storage_label: str) -> str:
    """The parent run's id, created if the study (`main`, its Optuna study) or the store lacks it.
    The caller holds the study's setup lock, so workers started together create one parent."""
    run_id = main.user_attrs.get(PARENT_ATTR)
    if run_id and run_status(mlflow, run_id) is not None:
        return run_id
    if run_id:
        _log.warning("the MLflow store has no parent run %s of study %s (was the store deleted?); "
                     "creating a new one; finished trials logged to the old store are not retrained",
                     run_id, spec.name)
    parent = Tracker.start(mlflow, spec.name, run_name=spec.name,
                           tags={"ablation": spec.name, "study": spec.name, "stage": "study",
                                 "storage": storage_label, "mlflow.source.git.commit": git_commit() or "unknown"})
    parent.log_params({"spec": spec.path, "variants": len(spec.variants),
                       "seeds": fmt(list(spec.seeds)), "search": spec.search is not None,
                       "fingerprint": spec.fingerprint})
    parent.log_dict(spec.resolved, "spec.json")
    main.set_user_attr(PARENT_ATTR, parent.run_id)
    # The comparison view exists (and the printed link works) from the study's first run.
    publish_comparison_view(mlflow, mlflow.get_run(parent.run_id).info.experiment_id,
                            varying_axes([v.arch for v in spec.variants]))
    return parent.run_id


def reopen_parent(mlflow, run_id: str) -> None:
    """RUNNING again while this command works on the study."""
    if run_status(mlflow, run_id) != "RUNNING":
        mlflow.update_run(run_id, status="RUNNING")


def end_parent(mlflow, run_id: str, study_name: str, status: str, done: bool) -> None:
    """FINISHED only when every trial has ended (`done`), with the study's results; KILLED or
    FAILED when `ablate run` stops first."""
    current = run_status(mlflow, run_id)
    if current is None or current == status:
        return
    if status == "FINISHED" and not done:
        if current == "RUNNING":  # stopped with work left for others: not running here any more
            mlflow.set_terminated(run_id, status="KILLED")
        return
    if status == "FINISHED":
        refresh_study_results(mlflow, study_name, run_id)
    mlflow.set_terminated(run_id, status=status)


def supersede(mlflow, run_id: str | None) -> None:
    """An interrupted attempt whose retry is enqueued: closed KILLED if still open, and tagged
    `superseded` so the comparison view and the UI's group averages leave it out."""
    if run_status(mlflow, run_id) is None:
        return
    close_dead_attempt(mlflow, run_id)
    mark_superseded(mlflow, run_id)


def close_dead_attempt(mlflow, run_id: str | None) -> None:
    """End the MLflow run of an attempt whose worker died (KILLED), if the store still has it."""
    if run_status(mlflow, run_id) == "RUNNING":
        mlflow.set_tag(run_id, "killed", "worker died")
        mlflow.set_terminated(run_id, status="KILLED")


def close_orphans(mlflow, study_name: str, trials: dict, parent_run_id: str | None = None) -> None:
    """End the RUNNING trial runs no attempt will ever close: their Optuna trial (`trials`, keyed
    (optuna study name, trial number)) is no longer RUNNING (it failed while the store was
    unwritable, or a crash lost the record naming the run), or the worker that started them, on
    this host, is dead. A parent run other than the study's own (`parent_run_id`) is one whose
    Optuna study is gone (its journal moved aside to start over): ended KILLED too."""
    exp = mlflow.get_experiment_by_name(study_name)
    if exp is None:
        return
    for run in mlflow.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get("stage") == "study":
            if parent_run_id and run.info.run_id != parent_run_id:
                mlflow.set_tag(run.info.run_id, "killed", "its study was started over (a new Optuna study)")
                mlflow.set_terminated(run.info.run_id, status="KILLED")
            continue
        trial = trials.get((tags.get("optuna_study"), int(tags.get("trial", -1))))
        alive = trial is not None and trial.state.name == "RUNNING" and not worker_is_dead(tags.get("worker"))
        if not alive:
            mlflow.set_tag(run.info.run_id, "killed", "its attempt ended without closing it")
            mlflow.set_terminated(run.info.run_id, status="KILLED")
