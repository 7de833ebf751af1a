"""Ablation studies under Optuna: set a study up, run its trials, report its status.

Layout in Optuna (one storage, see runners/study/storage.py):
* study `<name>`: the confirmation trials, one per (variant, seed) grid cell, enqueued once. They
  are never pruned and are the only trials the figures use.
* with `search:`, one study `<name>:search:<variant>` per variant, holding exactly
  `trials_per_variant` enqueued trials that TPE fills in; the median pruner compares a trial only
  with its own variant's. When a variant's search is over, its cells are enqueued at its best
  hyperparameters (selected on the validation split).

Layout in MLflow: one experiment per study, one parent run per study, one child run per trial
(`mlflow.parentRunId`), tagged with the axes, `stage`, `variant`, `study` and `trial`. The Optuna
trial stores `mlflow_run_id`.

Workers claim WAITING trials atomically (Optuna's own compare-and-set on the trial state), so any
number of them, on any number of machines, run each trial once. A trial whose worker died is
failed and re-enqueued with the same cell and checkpoint directory, so its retry resumes from the
last epoch.
"""
from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path
from statistics import mean, stdev

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..database import check_database
from ..errors import ConfigError, redact
from ..paths import default_storage, default_tracking_uri, results_dir
from ..tracking.runs import Terminated, Tracker, client, fmt, git_commit, tracked_run
from ..tracking.runs import label as arch_label, mark_superseded, run_name as arch_run_name  # hook: mlflow
from ..tracking.view import publish_comparison_view, varying_axes  # hook: mlflow
from .progress import NoProgress, cell_counts  # hook: progress
from .publish import refresh_study_results  # hook: mlflow
from .spec import SEARCHABLE, StudySpec, Variant
from .storage import Heartbeat, fail_stale_trials, is_database, open_storage, setup_lock, worker_id

CONFIRM, SEARCH = "confirm", "search"
CELL_ATTRS = ("stage", "variant", "seed", "cell", "hparams", "checkpoint")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class StudyRunner:
    """One process's view of a study: its stores, its device, and the trial loop."""

    def __init__(self, spec: StudySpec, *, storage: str | None = None, tracking_uri: str | None = None,
                 device: str = "auto", threads: int | None = None, checkpoint_root: str | None = None,
                 heartbeat: int = 30, poll: float = 2.0, track: bool = True) -> None:
        self.spec = spec
        self.storage_url = storage or default_storage(spec.name)
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.device, self.threads, self.poll = device, threads, poll
        self.checkpoint_root = Path(checkpoint_root or results_dir() / "checkpoints") / spec.name
        # Both stores are checked before either is written to: a bad one leaves nothing behind.
        if is_database(self.storage_url):
            check_database(self.storage_url, "the Optuna storage",
                           "check the host, the credentials and that the database exists")
        self.mlflow = client(self.tracking_uri) if track else None
        self.storage = open_storage(self.storage_url, heartbeat=heartbeat, on_stale=self._requeue)
        self._dataset = None
        self._studies: dict[str, optuna.Study] = {}
        self.progress = NoProgress()  # hook: progress (the command sets a StudyProgress)

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

    def main_study(self, create: bool = False) -> optuna.Study:
        return self._study(self.spec.name, create=create)

    def search_study(self, variant: Variant, create: bool = False) -> optuna.Study:
        return self._study(f"{self.spec.name}:search:{variant.key}", search=True, create=create)

    def all_studies(self) -> list[optuna.Study]:
        studies = [self.main_study()]
        if self.spec.search:
            studies += [self.search_study(v) for v in self.spec.variants]
        return studies

    def exists(self) -> bool:
        return any(s.study_name == self.spec.name for s in optuna.get_all_study_summaries(self.storage))

    # -- setup (idempotent, under a lock) ----------------------------------------------------
    def setup(self) -> None:
        with setup_lock(self.storage_url, self.spec.name):
            main = self.main_study(create=True)
            fingerprint = main.user_attrs.get("fingerprint")
            if fingerprint not in (None, self.spec.fingerprint):
                raise ConfigError(f"study {self.spec.name!r} already exists in {redact(self.storage_url)} with a "
                                  "different spec; rerun with the same spec and --set values, or rename the study")
            if fingerprint is None:
                main.set_user_attr("fingerprint", self.spec.fingerprint)
                main.set_user_attr("spec", self.spec.resolved)
            if "mlflow_parent_run_id" not in main.user_attrs:
                parent = Tracker.start(self.mlflow, self.spec.name, run_name=self.spec.name,
                                       tags={"ablation": self.spec.name, "study": self.spec.name, "stage": "study",
                                             "storage": redact(self.storage_url),
                                             "mlflow.source.git.commit": git_commit() or "unknown"})
                parent.log_params({"spec": self.spec.path, "variants": len(self.spec.variants),
                                   "seeds": fmt(list(self.spec.seeds)), "search": self.spec.search is not None,
                                   "fingerprint": self.spec.fingerprint})
                parent.log_dict(self.spec.resolved, "spec.json")
                main.set_user_attr("mlflow_parent_run_id", parent.run_id)
            # hook: mlflow -- the comparison view exists (and its link works) from the start
            publish_comparison_view(self.mlflow, self.mlflow.get_experiment_by_name(self.spec.name).experiment_id,
                                    varying_axes([v.arch for v in self.spec.variants]))
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

    def _enqueue_cells(self, main: optuna.Study, v: Variant, hparams: dict) -> None:
        present = {t.user_attrs.get("cell") for t in main.get_trials(deepcopy=False)}
        for seed in self.spec.seeds:
            cell = f"{v.key}/seed={seed}"
            if cell not in present:
                main.enqueue_trial({}, user_attrs={
                    "stage": CONFIRM, "variant": v.key, "seed": seed, "cell": cell, "hparams": hparams,
                    "checkpoint": str(self.checkpoint_root / CONFIRM / v.key / f"seed{seed}")})

    def _enqueue_ready_cells(self) -> bool:
        """Enqueue the cells of each variant whose search is over; True if any were added."""
        main = self.main_study()
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
            with setup_lock(self.storage_url, self.spec.name):
                main.set_user_attr(f"best:{v.key}", {"trial": best.number, "value": best.value,
                                                      "params": best.params})
                self._enqueue_cells(main, v, best.params)
            added = True
        return added

    # -- the worker loop ---------------------------------------------------------------------
    def work(self) -> int:
        """Run trials until none are left; exit status 1 if any trial failed with an error."""
        failed = 0
        while True:
            studies = self.all_studies()
            for s in studies:
                fail_stale_trials(s, self._requeue)
            claimed = self._claim(studies)
            if claimed is not None:
                failed += not self._run(*claimed)
                continue
            if self.spec.search and self._enqueue_ready_cells():
                continue
            if any(s.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
                   for s in studies):
                time.sleep(self.poll)  # others are still training; a dead one will be retried here
                continue
            break
        self.end_parent("FINISHED")
        return 1 if failed else 0

    def _claim(self, studies) -> tuple[optuna.Study, optuna.Trial] | None:
        for study in studies:  # confirmation cells first: they are the results
            for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                try:
                    if study._storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                        trial = optuna.trial.Trial(study, t._trial_id)
                        trial.set_user_attr("worker", worker_id())
                        return study, trial
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue
        return None

    def dataset(self, device: str | None = None):
        """The study's data, loaded once per worker onto its device."""
        if self._dataset is None:
            from ..train.data import load_dataset
            from ..train.trainer import resolve_device
            self._dataset = load_dataset(self.spec.dataset, resolve_device(device or self.device))
        return self._dataset

    def _run(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        from ..train.trainer import train
        attrs = study._storage.get_trial(trial._trial_id).user_attrs
        stage, v, seed = attrs["stage"], self.spec.variant(attrs["variant"]), attrs["seed"]
        if stage == SEARCH:
            hparams = {name: _suggest(trial, name, dist) for name, dist in self.spec.search.space.items()}
            checkpoint = attrs.get("checkpoint") or str(self.checkpoint_root / SEARCH / v.key / f"trial{trial.number}")
            trial.set_user_attr("checkpoint", checkpoint)
        else:
            hparams, checkpoint = attrs["hparams"], attrs["checkpoint"]
        cfg = v.recipe(self.spec.train, seed=seed, device=self.device, threads=self.threads, **hparams)
        tags = {"ablation": self.spec.name, "study": self.spec.name, "stage": stage, "variant": v.key,
                "trial": trial.number, "optuna_study": study.study_name, "worker": worker_id(),
                **({"retry_of": attrs["retry_of"]} if "retry_of" in attrs else {})}
        run_name = (arch_run_name(v.arch, seed) if stage == CONFIRM  # hook: mlflow (run name)
                    else f"search {arch_label(v.arch)} trial {trial.number}")
        tracker = Tracker.start(self.mlflow, self.spec.name, run_name, tags=tags,
                                parent_run_id=self.main_study().user_attrs["mlflow_parent_run_id"])
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
        resumed = Path(checkpoint).exists() and any(Path(checkpoint).iterdir())
        trial.set_user_attr("resumed", resumed)

        def report(epoch: int, metrics: dict) -> None:  # only search trials prune; confirmations never do
            self.progress.epoch(epoch, metrics)  # hook: progress
            if stage != SEARCH:
                return
            if metrics.get("val_error") is not None:
                trial.report(metrics["val_error"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        pruned = False
        # hook: progress
        from ..train.trainer import Plan
        self.progress.set_done(*cell_counts(self.spec, self.all_studies()))
        self.progress.start(f"trial {trial.number} {run_name}", Plan.of(cfg, len(self.dataset().train)).epochs,
                            resumed)
        try:
            with Heartbeat(study, trial._trial_id), tracked_run(tracker):
                try:
                    result = train(v.arch, cfg, self.dataset(), tracker=tracker, checkpoint_dir=checkpoint,
                                   on_epoch=report, model_name=v.model_name)  # hook: progress (on_epoch)
                except optuna.TrialPruned:
                    pruned = True
                    tracker.set_tags({"pruned": "true"})
        except (KeyboardInterrupt, Terminated):
            # Interrupted: fail the trial and enqueue its retry now, so the rerun resumes it.
            if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                self._requeue(study, study._storage.get_trial(trial._trial_id))
            raise
        except Exception as e:  # noqa: BLE001 - one broken trial must not stop the study
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
            study.tell(trial, state=TrialState.FAIL)
            self.progress.finish(f"failed ({type(e).__name__})")  # hook: progress
            print(f"ablate: trial {trial.number} ({run_name}) failed: {type(e).__name__}: {e}", file=sys.stderr)
            return False
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            self.progress.finish("pruned")  # hook: progress
        else:
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
            self.progress.finish("diverged" if diverged else "done",  # hook: progress
                                 {k: final.get(k) for k in ("train_error", "val_error", "test_error")})
        shutil.rmtree(checkpoint, ignore_errors=True)  # the weights live in MLflow now
        return True

    def _requeue(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Close a dead attempt's MLflow run and enqueue its retry (same cell, same checkpoint)."""
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and self.mlflow.get_run(run_id).info.status == "RUNNING":
            self.mlflow.set_tag(run_id, "killed", "worker died")
            self.mlflow.set_terminated(run_id, status="KILLED")
        if run_id:
            mark_superseded(self.mlflow, run_id)  # hook: mlflow (superseded tag)
        attrs = {k: trial.user_attrs[k] for k in CELL_ATTRS if k in trial.user_attrs}
        study.enqueue_trial(trial.params, user_attrs={**attrs, "retry_of": trial.number})

    def end_parent(self, status: str) -> None:
        """FINISHED when every trial has ended; KILLED when `ablate run` stops before that."""
        run_id = self.main_study().user_attrs.get("mlflow_parent_run_id")
        if not run_id:
            return
        if status == "FINISHED" and not self.is_done():
            return
        if self.mlflow.get_run(run_id).info.status != status:
            if status == "FINISHED":
                refresh_study_results(self.mlflow, self.spec.name, run_id)  # hook: mlflow (parent results)
            self.mlflow.set_terminated(run_id, status=status)

    def reopen_parent(self) -> None:
        run_id = self.main_study().user_attrs.get("mlflow_parent_run_id")
        if run_id and self.mlflow.get_run(run_id).info.status != "RUNNING":
            self.mlflow.update_run(run_id, status="RUNNING")

    def is_done(self) -> bool:
        studies = self.all_studies()
        if any(s.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)) for s in studies):
            return False
        present = {t.user_attrs.get("variant") for t in studies[0].get_trials(deepcopy=False)}
        if not self.spec.search:
            return True
        return all(v.key in present or not any(t.state == TrialState.COMPLETE for t in self.search_study(v).trials)
                   for v in self.spec.variants)

    # -- status ------------------------------------------------------------------------------
    def status(self) -> list[dict]:
        main = self.main_study()
        rows = []
        for v in self.spec.variants:
            confirm = [t for t in main.get_trials(deepcopy=False) if t.user_attrs.get("variant") == v.key]
            search = self.search_study(v).get_trials(deepcopy=False) if self.spec.search else []
            trials = confirm + search
            errors = [t.user_attrs["final_test_error"] for t in confirm
                      if t.state == TrialState.COMPLETE and "final_test_error" in t.user_attrs
                      and not t.user_attrs.get("diverged")]
            count = {s: sum(t.state == s for t in trials) for s in TrialState}
            rows.append({
                "variant": v.key, "cells": len(self.spec.seeds),
                "complete": count[TrialState.COMPLETE], "running": count[TrialState.RUNNING],
                "waiting": count[TrialState.WAITING], "pruned": count[TrialState.PRUNED],
                "failed": count[TrialState.FAIL],
                "diverged": sum(bool(t.user_attrs.get("diverged")) for t in trials),
                "search": f"{sum(t.state in FINISHED for t in search)}/{len(search)}" if self.spec.search else "-",
                "best_test_error": min(errors) if errors else None,
                "mean_test_error": mean(errors) if errors else None,
                "std_test_error": stdev(errors) if len(errors) > 1 else None,
                "n": len(errors)})
        return rows


def _suggest(trial: optuna.Trial, name: str, dist: dict):
    if "choices" in dist:
        return trial.suggest_categorical(name, dist["choices"])
    if SEARCHABLE[name] is int:
        return trial.suggest_int(name, int(dist["low"]), int(dist["high"]), log=bool(dist.get("log")))
    return trial.suggest_float(name, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log")))
