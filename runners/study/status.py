"""Per-variant progress and results of a study, read from its Optuna storage alone (no MLflow)."""
from __future__ import annotations

import os
from pathlib import Path
from statistics import mean, stdev

import optuna
from optuna.trial import TrialState

from ..errors import ConfigError, redact
from ..database import canonical_url
from ..paths import STORAGE_ENV, default_storage, journal_path, results_dir
from .layout import FINISHED, Layout
from .spec import StudySpec
from .storage import open_storage


def open_layout(spec: StudySpec, storage: str | None = None, attempts: int | None = None) -> Layout:
    """The layout of an existing study in `storage` (a URL as users write it; default: the study's
    journal); ConfigError (and nothing created) when there is none."""
    storage_url = canonical_url(storage or default_storage(spec.name))
    journal = journal_path(storage_url)
    if journal is not None and not journal.exists():
        raise ConfigError(f"no study storage at {storage_url}; start the study with `ablate run {spec.path}`")
    layout = Layout(spec, open_storage(storage_url), storage_url, checkpoint_root=Path("."), attempts=attempts)
    if not layout.exists():
        raise ConfigError(f"no study named {spec.name!r} in {redact(storage_url)}; "
                          f"start it with `ablate run {spec.path}`")
    return layout


def status(layout: Layout) -> list[dict]:
    """One row per variant: trial counts by state, attempts, and the confirmation test errors.

    failed: attempts that raised and have not been retried (yet). retried: attempts that were
    interrupted, or failed and retried; neither counts against the study's results.
    """
    spec, main = layout.spec, layout.main()
    rows = []
    for v in spec.variants:
        confirm = [t for t in main.get_trials(deepcopy=False) if t.user_attrs.get("variant") == v.key]
        search = layout.search_study(v).get_trials(deepcopy=False) if spec.search else []
        trials = confirm + search
        retried = {t.user_attrs["retry_of"] for t in confirm if "retry_of" in t.user_attrs}
        retried_search = {t.user_attrs["retry_of"] for t in search if "retry_of" in t.user_attrs}
        superseded = [t for t in confirm if t.number in retried] + [t for t in search if t.number in retried_search]
        errors = [t.user_attrs["final_test_error"] for t in confirm
                  if t.state == TrialState.COMPLETE and "final_test_error" in t.user_attrs
                  and not t.user_attrs.get("diverged")]
        count = {s: sum(t.state == s for t in trials) for s in TrialState}
        used = max((t.user_attrs.get("attempt", 1) for t in confirm), default=0)
        rows.append({
            "variant": v.key, "cells": len(spec.seeds),
            "complete": count[TrialState.COMPLETE], "running": count[TrialState.RUNNING],
            "waiting": count[TrialState.WAITING], "pruned": count[TrialState.PRUNED],
            "failed": count[TrialState.FAIL] - len(superseded), "retried": len(superseded),
            "attempts": f"{used}/{layout.attempts}",
            "diverged": sum(bool(t.user_attrs.get("diverged")) for t in trials),
            "search": f"{sum(t.state in FINISHED for t in search)}/{len(search)}" if spec.search else "-",
            "best_test_error": min(errors) if errors else None,
            "mean_test_error": mean(errors) if errors else None,
            "std_test_error": stdev(errors) if len(errors) > 1 else None,
            "n": len(errors)})
    return rows


def known_storages(storage: str | None = None) -> list[str]:
    """The storages `ablate status` without a spec looks in: `storage` (or $ABLATE_STORAGE) if
    given, else every study journal under results/optuna/."""
    given = storage or os.environ.get(STORAGE_ENV)
    if given:
        return [canonical_url(given)]
    return [str(p) for p in sorted((results_dir() / "optuna").glob("*.journal"))]


def list_studies(storages: list[str]) -> list[dict]:
    """One row per study in `storages`: its cells (the latest attempt of each) by state, read
    from Optuna alone; search studies (`<name>:search:<variant>`) count as their study's."""
    rows = []
    for url in storages:
        storage = open_storage(url)
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
        names = [s.study_name for s in summaries]
        for name in (n for n in names if ":search:" not in n):
            latest: dict[str, object] = {}
            for n in (x for x in names if x == name or x.startswith(f"{name}:search:")):
                for t in optuna.load_study(study_name=n, storage=storage).get_trials(deepcopy=False):
                    cell = t.user_attrs.get("cell") or f"{n}#{t.number}"
                    if cell not in latest or t.number > latest[cell].number:
                        latest[cell] = t
            states = [t.state for t in latest.values()]
            failed = sum(t.state == TrialState.FAIL and "error" in t.user_attrs for t in latest.values())
            rows.append({"study": name, "storage": redact(url), "cells": len(latest),
                         "done": sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states),
                         "running": states.count(TrialState.RUNNING), "waiting": states.count(TrialState.WAITING),
                         "failed": failed})
    return rows
