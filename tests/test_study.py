"""`ablate run/worker/status`: trials run exactly once, resume after a kill, land in MLflow."""
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from conftest import REPO, ablate, assert_one_line_error

SMOKE = REPO / "ablations" / "smoke.yaml"
AXES = ("family", "depth", "block", "shortcut", "preact", "width", "seed", "stage", "variant")


def _store(results: Path):
    return MlflowClient(f"sqlite:///{results / 'mlflow.db'}")


def _trials(results: Path, name: str = "smoke"):
    storage = JournalStorage(JournalFileBackend(str(results / "optuna" / f"{name}.journal")))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def _children(results: Path, experiment: str = "smoke"):
    c = _store(results)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("stage") == "study"]
    return c, parents, [r for r in runs if r.data.tags.get("stage") != "study"]


def test_smoke_study_runs_every_cell_once_with_tagged_children(results):
    out = ablate("run", SMOKE)
    assert out.returncode == 0, out.stderr
    assert "workflowType=machine_learning" in out.stdout  # the link into MLflow's training view
    trials = _trials(results)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert Counter(t.user_attrs["cell"] for t in trials) == Counter({
        f"cifar-d8-basic-{s}-post-w1/seed={k}": 1 for s in ("none", "A") for k in (0, 1)})
    c, parents, children = _children(results)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert all(a in run.data.tags for a in AXES)
        assert run.data.tags["ablation"] == "smoke" and run.data.tags["stage"] == "confirm"
        assert run.data.params["depth"] == "8"
    by_run = {t.user_attrs["mlflow_run_id"]: t for t in trials}
    assert set(by_run) == {r.info.run_id for r in children}  # the trial knows its MLflow run
    for run in children:
        assert run.data.tags["trial"] == str(by_run[run.info.run_id].number)
    assert {r.data.tags["shortcut"] for r in children} == {"none", "A"}

    # Running it again finds nothing to do and trains nothing twice.
    again = ablate("run", SMOKE)
    assert again.returncode == 0, again.stderr
    assert len(_trials(results)) == 4 and len(_children(results)[2]) == 4

    status = ablate("status", SMOKE, "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [r["complete"] for r in rows] == [2, 2] and all(r["n"] == 2 for r in rows)


def test_sigkill_mid_trial_then_rerun_resumes_from_checkpoint(results):
    overrides = ["--set", "train.epochs=6", "--set", "seeds=[0]"]
    proc = subprocess.Popen([sys.executable, "-m", "runners.cli", "run", str(SMOKE), *overrides],
                            cwd=REPO, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = results / "checkpoints" / "smoke" / "confirm"
    deadline = time.time() + 120
    while time.time() < deadline and not any(checkpoints.rglob("*.pt")):
        time.sleep(0.05)
    assert any(checkpoints.rglob("*.pt")), "no checkpoint was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    # The killed trial is RUNNING in the journal and its MLflow run is RUNNING.
    assert [t.state for t in _trials(results)].count(TrialState.RUNNING) == 1

    out = ablate("run", SMOKE, *overrides)
    assert out.returncode == 0, out.stderr
    trials = _trials(results)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert Counter(t.user_attrs["cell"] for t in complete) == Counter({
        "cifar-d8-basic-none-post-w1/seed=0": 1, "cifar-d8-basic-A-post-w1/seed=0": 1})
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    retry = next(t for t in complete if t.user_attrs.get("retry_of") == failed[0].number)
    assert retry.user_attrs["resumed"] is True and retry.user_attrs["epochs"] == 6
    c, parents, children = _children(results)
    statuses = Counter(r.info.status for r in children)
    assert statuses == Counter({"FINISHED": 2, "KILLED": 1})
    assert "RUNNING" not in {r.info.status for r in parents + children}
    resumed_run = c.get_run(retry.user_attrs["mlflow_run_id"])
    # The resumed run carries the whole curve, the epochs before the kill included.
    assert len(c.get_metric_history(resumed_run.info.run_id, "train_error")) == 6


def test_two_workers_on_one_host_run_every_cell_once(results):
    out = ablate("run", SMOKE, "--workers", "2", "--poll", "0.2", "--set", "seeds=[0,1,2]")
    assert out.returncode == 0, out.stderr
    trials = _trials(results)
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["cell"] for t in trials}) == 6
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers took trials
    assert len(_children(results)[2]) == 6


def test_search_tunes_each_variant_then_confirms_at_its_best(results):
    search = ["--set", "search.trials_per_variant=3", "--set", "search.pruner=none",
              "--set", "search.space={lr: {low: 0.01, high: 0.2, log: true}}", "--set", "seeds=[0]"]
    out = ablate("run", SMOKE, *search)
    assert out.returncode == 0, out.stderr
    storage = JournalStorage(JournalFileBackend(str(results / "optuna" / "smoke.journal")))
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == ["smoke", "smoke:search:cifar-d8-basic-A-post-w1", "smoke:search:cifar-d8-basic-none-post-w1"]
    main = optuna.load_study(study_name="smoke", storage=storage)
    for name in names[1:]:
        study = optuna.load_study(study_name=name, storage=storage)
        assert len(study.trials) == 3  # the same budget for every variant
        variant = name.split(":")[-1]
        cell = next(t for t in main.trials if t.user_attrs["variant"] == variant)
        assert cell.user_attrs["hparams"] == study.best_trial.params  # selected on validation error
        assert study.best_value == study.best_trial.user_attrs["final_val_error"]
    c, parents, children = _children(results)
    assert Counter(r.data.tags["stage"] for r in children) == Counter({"search": 6, "confirm": 2})


@pytest.mark.parametrize("content,fragments", [
    ("name: x\nmodel: {depth: 21}\n", ["model", "depth must be 6n+2 for basic blocks (nearest: 20, 26)"]),
    ("name: x\nmodel: {depth: 20}\nbogus: 1\n", ["unknown field(s) bogus"]),
    ("name: x\nmodel: {depth: 20}\ntrain: {epochs: three}\n", ["train.epochs must be an int"]),
    ("name: x\nmodel: {depth: 20}\ntrain: {lr: 0.1, colour: red}\n", ["train: unknown field(s) colour"]),
    ("name: x\ndataset: {name: /nowhere/data}\nmodel: {depth: 20}\n", ["/nowhere/data", "ImageFolder"]),
    ("name: x\nmodel: {depth: 20, shortcut: D}\n", ["shortcut must be one of none, A, B, C"]),
    ("name: x\nmodel: {depth: 20}\nseeds: [0, 0]\n", ["seeds must be a list of distinct integers"]),
    ("name: x\nmodel: {depth: 20\n", ["not valid YAML"]),
    ("name: x\nmodel: {depth: !!python/object/apply:os.system [echo hi]}\n", ["not valid YAML"]),
    ("name: x\nmodel: {depth: 20}\nsearch: {trials_per_variant: 2, space: {lr: {low: 1, high: 0.1}}}\n",
     ["search.space.lr"]),
])
def test_bad_specs_fail_in_one_line_and_create_nothing(results, tmp_path, content, fragments):
    spec = tmp_path / "bad.yaml"
    spec.write_text(content)
    out = ablate("run", spec)
    assert_one_line_error(out, "bad.yaml", *fragments)
    assert not results.exists() or not any(results.rglob("*")), list(results.rglob("*"))


def test_bad_overrides_and_missing_files_fail_in_one_line(results):
    assert_one_line_error(ablate("run", "ablations/nope.yaml"), "nope.yaml not found")
    assert_one_line_error(ablate("run", SMOKE, "--set", "train.epochs"), "expected key.path=value")
    assert_one_line_error(ablate("run", SMOKE, "--set", "model.depth=21"), "depth must be 6n+2")
    assert_one_line_error(ablate("status", SMOKE), "ablate run")
    assert not results.exists() or not any(results.rglob("*"))


def test_a_changed_spec_does_not_silently_join_an_existing_study(results):
    assert ablate("run", SMOKE, "--set", "seeds=[0]").returncode == 0
    assert_one_line_error(ablate("run", SMOKE, "--set", "seeds=[0]", "--set", "train.epochs=3"),
                          "different spec")
