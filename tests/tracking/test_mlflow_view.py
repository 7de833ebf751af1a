"""MLflow as the study's front end: the comparison view, run names, the parent run's result,
MLflow's own conventions (dataset input, logged models), quiet logs, and study progress.

In-process tests use a temporary SQLite store; one small study (the smoke spec, SIGTERM'd once
mid-trial and resumed) is run through `ablate run` for what only a real study shows.
"""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import models
from conftest import REPO, ablate, ablate_forked, once
from runners.study.progress import StudyProgress, duration
from runners.tracking import view
from runners.tracking.results import VariantAxes
from runners.tracking.naming import label, metric_key, run_name
from runners.tracking.store import client
from runners.tracking.tracker import Tracker

SMOKE = REPO / "ablations" / "smoke.yaml"
# Every key the UI reads from a shared view state (mlflow/server/js: EXPERIMENT_PAGE_UI_STATE_FIELDS
# and ExperimentPageSearchFacetsState); the UI drops anything else.
UI_FIELDS = {"selectedColumns", "columnOrder", "columnWidths", "runsExpanded", "runsPinned", "runsHidden",
             "runsVisibilityMap", "runsHiddenMode", "compareRunCharts", "compareRunSections", "viewMaximized",
             "runListHidden", "isAccordionReordered", "groupBy", "groupsExpanded", "autoRefreshEnabled",
             "useGroupedValuesInCharts", "hideEmptyCharts", "globalLineChartConfig", "chartsSearchFilter",
             "searchFilter", "orderByKey", "orderByAsc", "startTime", "lifecycleFilter", "datasetsFilter",
             "modelVersionFilter"}


@pytest.fixture
def store(tmp_path):
    return client(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _run(c, exp_id, *, shortcut, seed, stage="confirm", status="FINISHED", test_error=0.3):
    name = "plain-20" if shortcut == "none" else f"ResNet-20 ({shortcut})"
    run = c.create_run(exp_id, run_name=f"{name} s{seed}", tags={
        "family": "cifar", "depth": "20", "block": "basic", "shortcut": shortcut, "preact": "false",
        "width": "1", "seed": str(seed), "stage": stage})
    c.log_metric(run.info.run_id, "test_error", test_error, step=1)
    c.log_metric(run.info.run_id, "test_error", test_error + 0.1, step=0)
    c.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


# -- the comparison view --------------------------------------------------------------------------
def test_comparison_view_is_a_shared_view_state_the_ui_reads(store):
    exp = store.create_experiment("view")
    keep = {_run(store, exp, shortcut=s, seed=k) for s in ("none", "A") for k in (0, 1)}
    _run(store, exp, shortcut="A", seed=2, status="KILLED")  # an interrupted attempt
    _run(store, exp, shortcut="A", seed=0, stage="search")
    _run(store, exp, shortcut="none", seed=3, status="RUNNING")

    url = view.publish_comparison_view(store, exp, ["shortcut"], ui="http://127.0.0.1:5123")
    key = store.get_experiment(exp).tags[view.VIEW_TAG]
    assert url == (f"http://127.0.0.1:5123/#/experiments/{exp}/runs?viewStateShareKey={key}"
                   "&compareRunsMode=CHART&workflowType=machine_learning")
    tags = store.get_experiment(exp).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI layout
    state = json.loads(tags[f"mlflow.sharedViewState.{key}"])
    assert set(state) <= UI_FIELDS
    assert state["groupBy"] == {"aggregateFunction": "average",
                                "groupByKeys": [{"mode": "tag", "groupByData": view.GROUP_TAG}]}
    assert (state["orderByKey"], state["orderByAsc"]) == (f"tags.`{view.ORDER_TAG}`", True)
    for column in ("tags.`depth`", "tags.`shortcut`", "tags.`seed`", "metrics.`train_error`",
                   "metrics.`test_error`"):
        assert column in state["selectedColumns"]
    assert state["selectedColumns"][0] == "tags.`shortcut`"  # the varying axis first
    charts = state["compareRunCharts"]
    # The bar charts of the final errors first, then the paper's curves, y fitted to the data.
    assert [(c["type"], c["metricKey"]) for c in charts[:4]] == [
        ("BAR", "test_error"), ("BAR", "train_error"), ("LINE", "train_error"), ("LINE", "test_error")]
    assert charts[3]["range"] == {"yMin": 0.296, "yMax": 0.404}  # 0.3 to 0.4, and 4% of that each side
    bars, curves, *parent = state["compareRunSections"]  # the comparison open, the parent run's metrics folded
    assert {c["metricSectionId"] for c in charts if c["type"] == "BAR"} == {bars["uuid"]} and bars["display"]
    assert {c["metricSectionId"] for c in charts if c["type"] == "LINE"} == {curves["uuid"]} and curves["display"]
    assert [s["name"] for s in parent] == list(view.PARENT_SECTIONS) and not any(s["display"] for s in parent)
    # The view's filter, run by MLflow itself: FINISHED confirmation runs only.
    shown = store.search_runs([exp], filter_string=state["searchFilter"])
    assert {r.info.run_id for r in shown} == keep
    # Every confirmation run got its group tags when the view was published.
    assert {r.data.tags[view.GROUP_TAG].rstrip() for r in shown} == {"plain-20", "ResNet-20 (A)"}

    # Idempotent: every worker may publish; `status` and `figures` find the same link.
    assert view.publish_comparison_view(store, exp, ["shortcut"], ui="http://127.0.0.1:5123") == url
    assert view.comparison_link(store, "view", ui="http://127.0.0.1:5123") == url
    assert view.comparison_link(store, "no-such-experiment") is None
    assert view.observed_axes(shown) == ["shortcut"]


def test_group_tags_colour_plain_and_residual_apart_and_pair_them_by_depth():
    variants = [(f"plain-{d}", d) for d in (8, 14, 20)] + [(f"ResNet-{d} (A)", d) for d in (8, 14, 20)]
    tags = view.group_tags(variants)
    colour = {n: view.ui_group_colour(f"tag.{view.GROUP_TAG}.{t[view.GROUP_TAG]}") for n, t in tags.items()}
    plain, residual = view.RAMPS[0], view.RAMPS[1]
    assert [colour[f"plain-{d}"] for d in (20, 14, 8)] == list(plain[:3])  # deeper is darker
    assert [colour[f"ResNet-{d} (A)"] for d in (20, 14, 8)] == list(residual[:3])
    assert all(t[view.GROUP_TAG].rstrip() == n for n, t in tags.items())  # only spaces are added
    order = sorted(tags, key=lambda n: tags[n][view.ORDER_TAG])
    assert order == ["plain-8", "ResNet-8 (A)", "plain-14", "ResNet-14 (A)", "plain-20", "ResNet-20 (A)"]
    # The UI's hash (mlflow/server/js getStableColorForRun), checked on a value worked by hand.
    assert view.ui_group_colour("ab") == ((97 + 98) % 255 | (97 + 97 + 98) % 255 << 8) % 29


def test_varying_axes_come_from_the_specs():
    specs = [models.resolve(n) for n in ("plain20", "resnet20", "plain56", "resnet56")]
    assert view.varying_axes(specs) == ["depth", "shortcut"]
    assert view.varying_axes([models.resolve("resnet20")]) == []
    state = view.comparison_view_state([])  # before any run finished: no fitted range yet
    assert all(c["range"] == {} for c in state["compareRunCharts"] if c["type"] == "LINE")


def test_find_comparison_link_creates_no_store(tmp_path):
    db = tmp_path / "none.db"
    assert view.find_comparison_link(f"sqlite:///{db}", "x") is None
    assert not db.exists()


# -- run names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, overrides, expected", [
    ("plain20", {}, "plain-20 s0"), ("resnet20", {}, "ResNet-20 (A) s0"),
    ("preact-resnet110", {"shortcut": "B"}, "pre-act ResNet-110 (B) s0"),
    ("resnet164", {}, "ResNet-164 (B) bottleneck s0"), ("resnet20", {"width": 2}, "ResNet-20 (A) w2 s0")])
def test_run_names_are_the_figures_names(name, overrides, expected):
    spec = models.resolve(name, **overrides)
    assert run_name(spec, 0) == expected
    v = VariantAxes(spec.family, spec.total_depth, spec.block, spec.shortcut, spec.preact, "1")
    assert label(spec).startswith(v.label())  # the figures' legend names the same line
    assert metric_key("ResNet-20 (A)") == "ResNet-20 A"


# -- dataset input, logged model, quiet logs ---------------------------------------------------------
def test_dataset_input_and_logged_model(store):
    import torch

    from runners.train.config import DataConfig
    from runners.train.data import load_dataset
    data = load_dataset(DataConfig("synthetic", subset=200, val_size=50), "cpu")
    t = Tracker.start(store, "inputs", "ResNet-8 (A) s0")
    t.log_dataset(data)
    model_id = t.log_state_dict({"w": torch.ones(3)}, model_name="ResNet-8 (A) s0", step=2)
    t.end()
    run = store.get_run(t.run_id)
    [inp] = run.inputs.dataset_inputs
    assert inp.dataset.name == "synthetic" and len(inp.dataset.digest) == 16
    assert json.loads(inp.dataset.profile)["train"] == 150 and json.loads(inp.dataset.profile)["val"] == 50
    assert "generated" in json.loads(inp.dataset.source)["uri"]
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    [model] = store.search_logged_models([run.info.experiment_id])
    assert (model.model_id, model.name, model.source_run_id, str(model.status)) == (
        model_id, "ResNet-8 (A) s0", t.run_id, "READY")
    assert {a.path for a in store.list_artifacts(t.run_id)} == {"model.pt"}  # the contract's artifact stays


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_new_store_logs_no_mlflow_info_lines(tmp_path):
    code = ("from runners.tracking.store import client\nfrom runners.tracking.tracker import Tracker\n"
            f"c = client('sqlite:///{tmp_path / 'new.db'}')\n"
            "Tracker.start(c, 'e', 'r').end()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "INFO" not in out.stderr and "alembic" not in out.stderr, out.stderr


def test_a_tracking_server_gets_bounded_retries_for_the_process_unless_the_user_set_them():
    """MLflow's defaults retry a server that does not answer for minutes per call: a client for an
    http URI leaves the process the lab's limits (the check itself retries nothing), and keeps a
    value the user set; a server that refuses connections is then StoreUnreachable, redacted."""
    from conftest import process_state
    from runners.errors import ConfigError
    from runners.tracking.store import SERVER_LIMITS, client
    from runners.tracking.tracker import StoreUnreachable, server_calls, unanswered
    uri = "http://lab:SECRET@127.0.0.1:9"  # nothing listens on port 9
    with process_state():
        for k in SERVER_LIMITS:
            os.environ.pop(k, None)
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "7"  # the user's own
        with pytest.raises(ConfigError, match=r"cannot reach the MLflow tracking store http://lab:\*\*\*@"):
            client(uri)
        assert {k: os.environ[k] for k in SERVER_LIMITS} == {**SERVER_LIMITS, "MLFLOW_HTTP_REQUEST_TIMEOUT": "7"}
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # quick here: refused at once
        with pytest.raises(StoreUnreachable) as lost, server_calls(uri):
            MlflowClient(uri).get_run("0" * 32)
    assert str(lost.value) == "the MLflow tracking server at http://lab:***@127.0.0.1:9 stopped answering"
    assert not unanswered(ConnectionRefusedError(), "sqlite:///x.db")


# -- progress -----------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_counts_cells_estimates_and_totals():
    out, clock = io.StringIO(), Clock()
    p = StudyProgress(out, 4, tty=False, clock=clock)
    p.start("trial 0 plain-8 s0", epochs=2)
    clock.t = 10
    p.epoch(1, {"train_error": 0.5, "test_error": 0.6})
    clock.t = 20
    p.finish("done", {"test_error": 0.55})
    p.start("trial 1 plain-8 s1", epochs=2)
    clock.t = 3700
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/4] trial 0 plain-8 s0: started  elapsed 0 s"  # no ETA before a trial ends
    assert lines[1] == "  epoch 1/2  train_error 0.5000  test_error 0.6000  10 s"
    assert lines[2] == "[1/4] trial 0 plain-8 s0: done in 20 s  test_error 0.5500  elapsed 20 s, ETA 1m 00s"
    assert lines[3].startswith("[2/4] trial 1 plain-8 s1: started")
    assert lines[4] == "1/4 cells done; this process ran 1 trial(s) in 1h 01m"
    assert duration(59.4) == "59 s" and duration(61) == "1m 01s"


def test_progress_eta_weighs_the_cells_left_by_their_cost():
    out, clock = io.StringIO(), Clock()
    p = StudyProgress(out, 3, tty=False, clock=clock)
    p.set_done(0, 3, left_cost=1 + 4 + 4)  # a ResNet-8 cell, then two four times as costly
    p.start("trial 0 ResNet-8 (A) s0", epochs=2, cost=1)
    clock.t = 10
    p.finish("done")
    # 10 s per unit of cost, 8 units left: 80 s (the mean of finished trials would say 20 s).
    assert out.getvalue().splitlines()[-1].endswith("elapsed 10 s, ETA 1m 20s")
    p.set_done(1, 3)  # no costs given: the mean trial time, times the cells left
    p.start("trial 1", epochs=2)
    clock.t = 20
    p.finish("done")
    assert out.getvalue().splitlines()[-1].endswith("ETA 10 s")


def test_cell_costs_are_macs_times_images():
    from runners.study.estimate import cell_costs
    from runners.study.progress import cell_counts
    from runners.study.spec import load_spec
    spec = load_spec(REPO / "ablations" / "cpu-demo.yaml", check_data=False)
    costs = cell_costs(spec)
    plain8, res20 = costs[("confirm", "cifar-d8-basic-none-post-w1")], costs[("confirm", "cifar-d20-basic-A-post-w1")]
    assert 3.2 < res20 / plain8 < 3.4  # ResNet-20 costs 3.3 times plain-8: their MACs
    assert cell_counts(spec, [], costs) == (0, 30, pytest.approx(5 * sum(costs.values())))


def test_progress_on_a_terminal_redraws_one_bar():
    out = io.StringIO()
    p = StudyProgress(out, 2, tty=True, clock=Clock(), width=4)
    p.start("t", epochs=2)
    p.epoch(1, {"test_error": 0.5})
    p.epoch(2, {"test_error": 0.4})
    p.finish("done")
    text = out.getvalue()
    assert "\r  [##--] epoch 1/2" in text and "\r  [####] epoch 2/2" in text
    assert text.count("\n") == 2  # the start and end lines; the bar stays on one line
    assert "\r\x1b[K[1/2] t: done" in text  # the bar is cleared before the end line


# -- a real study: SIGTERM, resume, superseded attempt, the parent run's result -----------------------
@pytest.fixture(scope="session")
def study(tmp_path_factory, worker_id):
    """The smoke study (1 seed), SIGTERM'd during its first trial, then resumed to the end: once
    per session, shared by the test workers (conftest.once)."""
    with once(tmp_path_factory, worker_id, "sigterm-study") as (folder, build):
        if build:
            _sigterm_study(folder)
    r = json.loads((folder / "study.json").read_text())
    second = subprocess.CompletedProcess(["ablate", "run"], *r["second"])
    return {"results": folder / "results", "sigterm_code": r["sigterm_code"], "first_err": r["first_err"],
            "second": second}


def _sigterm_study(folder: Path) -> None:
    results = folder / "results"
    args = ["run", SMOKE, "--set", "seeds=[0]", "--set", "train.epochs=3"]
    proc = ablate_forked(*args, env={"ABLATE_RESULTS": str(results), "MLFLOW_TRACKING_URI": ""})
    checkpoint = results / "checkpoints" / "smoke" / "confirm"
    deadline = time.time() + 240
    while not any(checkpoint.rglob("checkpoint.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, first_err = proc.communicate(timeout=120)
    second = ablate(*args, env={"ABLATE_RESULTS": str(results)})
    assert second.returncode == 0, second.stderr
    (folder / "study.json").write_text(json.dumps({"sigterm_code": proc.returncode, "first_err": first_err,
                                                   "second": [second.returncode, second.stdout, second.stderr]}))
    (folder / "done").touch()


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_sigterm_exits_143_and_the_rerun_prints_the_comparison_link(study):
    assert study["sigterm_code"] == 143, study["first_err"]
    out = study["second"].stdout
    assert "viewStateShareKey=" in out and out.count("http://127.0.0.1:5000/#/experiments/") == 1
    assert "[2/2]" in out and "cells done" in out  # progress: cells, and the total line
    assert "INFO" not in study["second"].stderr, study["second"].stderr


def _smoke_runs(study):
    """The client, the smoke experiment and all its runs in the SIGTERM'd-and-resumed study."""
    c = MlflowClient(f"sqlite:///{study['results'] / 'mlflow.db'}")
    exp = c.get_experiment_by_name("smoke")
    return c, exp, c.search_runs([exp.experiment_id])


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_superseded_attempt_is_tagged_and_out_of_the_view(study):
    c, exp, runs = _smoke_runs(study)
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert len(killed) == 1 and killed[0].data.tags["superseded"] == "true"
    assert killed[0].info.run_name == "plain-8 s0"  # named as the figures name it
    state = json.loads(exp.tags["mlflow.sharedViewState." + exp.tags[view.VIEW_TAG]])
    shown = c.search_runs([exp.experiment_id], filter_string=state["searchFilter"])
    assert sorted(r.info.run_name for r in shown) == ["ResNet-8 (A) s0", "plain-8 s0"]
    assert all(r.info.status == "FINISHED" for r in shown)


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_parent_run_carries_the_study_result(study):
    c, exp, runs = _smoke_runs(study)
    [parent] = [r for r in runs if r.data.tags.get("stage") == "study"]
    children = {r.data.tags["shortcut"]: r for r in runs if r.data.tags.get("stage") == "confirm"
                and r.info.status == "FINISHED"}
    m = parent.data.metrics
    assert m["test_error/plain-8"] == pytest.approx(children["none"].data.metrics["test_error"])
    assert m["test_error/ResNet-8 A"] == pytest.approx(children["A"].data.metrics["test_error"])
    assert m["seeds/plain-8"] == 1 and "train_error/ResNet-8 A" in m
    figures = {Path(a.path).name for a in c.list_artifacts(parent.info.run_id, "figures")}
    assert {"curves.png", "training_loss.png", "variants.csv", "summary.md"} <= figures
    note = exp.tags["mlflow.note.content"]
    assert "viewStateShareKey=" in note and "test_error/<variant>" in note
    # MLflow's own conventions on every trial: the dataset as input, the weights as a logged model.
    for run in children.values():
        assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["synthetic"]
    models_ = c.search_logged_models([exp.experiment_id])
    assert {m.source_run_id for m in models_} >= {r.info.run_id for r in children.values()}
