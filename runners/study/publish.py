"""A study's result, carried by its MLflow parent run and experiment.

When a study completes, its parent run gets the per-variant final errors as metrics
(`test_error/ResNet-20 A`, mean over converged seeds), the figures and tables of `ablate figures`
as artifacts under `figures/`, and the experiment a description (`mlflow.note.content`, the
UI's description field) saying where to look. Everything is recomputed from the store, so a
refresh after more runs finish (or after a rerun) replaces what was there; a rerun that finished
no new run leaves it as it is (the parent's `published_runs` tag says which runs it shows).
"""
from __future__ import annotations

import hashlib
import math
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric

from ..tracking import view
from ..tracking.links import DEFAULT_UI
from ..tracking.naming import metric_key
from ..tracking.results import load_study

NOTE_TAG = "mlflow.note.content"
PUBLISHED_TAG = "published_runs"  # a digest of the runs the parent's figures and metrics show


def refresh_study_results(c, experiment_name: str, parent_run_id: str, ui: str = DEFAULT_UI) -> dict:
    """Log the study's result onto its parent run and describe the experiment; returns the
    metrics logged ({key: value})."""
    study = load_study(c, experiment_name)
    shown = hashlib.sha256(" ".join(sorted(r.run_id for r in study.runs)).encode()).hexdigest()[:16]
    if c.get_run(parent_run_id).data.tags.get(PUBLISHED_TAG) == shown:
        return {}  # nothing new finished since the last refresh: drawing it again would cost seconds
    from ..report.figures import write_all
    link = view.publish_comparison_view(c, study.experiment_id, ui=ui)
    lines = {v.line for v in study.by_variant}
    metrics: dict[str, float] = {}  # keyed <one of view.PARENT_SECTIONS>/<variant>
    for v, runs in study.by_variant.items():
        name = metric_key(v.label(with_line=len(lines) > 1))
        converged = [r for r in runs if r.converged]
        for key, attr in (("test_error", "final_test"), ("train_error", "final_train")):
            values = [getattr(r, attr) for r in converged if math.isfinite(getattr(r, attr))]
            if values:
                metrics[f"{key}/{name}"] = sum(values) / len(values)
        metrics[f"seeds/{name}"] = float(len(converged))
    now = int(time.time() * 1000)
    items = [Metric(k, v, now, 0) for k, v in sorted(metrics.items())]
    for i in range(0, len(items), 1000):
        c.log_batch(parent_run_id, metrics=items[i:i + 1000])
    with tempfile.TemporaryDirectory() as tmp:
        written, _, _ = write_all(study, Path(tmp))
        if written:
            c.log_artifacts(parent_run_id, tmp, "figures")
    note = describe(study, link)
    c.set_experiment_tag(study.experiment_id, NOTE_TAG, note)
    c.set_tag(parent_run_id, NOTE_TAG, note)
    c.set_tag(parent_run_id, PUBLISHED_TAG, shown)
    return metrics


def describe(study, link: str) -> str:
    """The experiment's description: what the runs are and where the comparison is."""
    n = len(study.runs)
    left_out = sum(study.ignored.values())
    return "\n".join([
        f"**{study.name}**: {len(study.by_variant)} variants, {n} finished confirmation runs "
        f"({left_out} other runs: search trials, interrupted or failed attempts, the study's parent run).",
        "",
        f"* **The comparison** (plain vs residual, grouped by the varying axes, mean over seeds, "
        f"train/test error curves first): [open the comparison view]({link}).",
        f"* **The result**: the parent run `{study.name}` has `test_error/<variant>` and "
        "`train_error/<variant>` (final error, mean over converged seeds) and `seeds/<variant>`, "
        "and the paper's figures and tables (`ablate figures`) under its artifacts, `figures/`.",
        "* **Runs** are named as the figures name them, with the seed (`ResNet-20 (A) s0`); "
        "each is tagged with its axes (family, depth, block, shortcut, preact, width, seed) and "
        "`stage` (confirm: the results; search: hyperparameter trials on the validation split).",
        "* A run tagged `superseded=true` is an interrupted attempt whose retry resumed it; "
        "only FINISHED confirmation runs count.",
    ])
