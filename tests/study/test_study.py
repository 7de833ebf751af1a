"""`ablate run/worker/status`: trials run exactly once, resume after a kill, land in MLflow."""
import json
import signal
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from conftest import REPO, ablate, ablate_forked, assert_one_line_error, recorded_run

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


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_smoke_study_runs_every_cell_once_with_tagged_children(smoke_study, smoke_results, monkeypatch):
    """On a copy of the session's smoke study (conftest.smoke_study: `ablate run` of the shipped spec)."""
    results = smoke_results
    out = recorded_run(smoke_study)
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

    # Running it again finds nothing to do and trains nothing twice, nor redraws the figures.
    published = parents[0].data.tags["published_runs"]
    again = ablate("run", SMOKE)
    assert again.returncode == 0, again.stderr
    assert len(_trials(results)) == 4 and len(_children(results)[2]) == 4
    from runners.report import figures
    from runners.study.publish import refresh_study_results
    monkeypatch.setattr(figures, "write_all", lambda *a, **k: pytest.fail("redrawn with no new run"))
    assert refresh_study_results(c, "smoke", parents[0].info.run_id) == {}
    assert c.get_run(parents[0].info.run_id).data.tags["published_runs"] == published

    status = ablate("status", SMOKE, "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [r["complete"] for r in rows] == [2, 2] and all(r["n"] == 2 for r in rows)


@pytest.mark.timeout(180)
@pytest.mark.slow
@pytest.mark.usefixtures("seeded_store")
def test_sigkill_mid_trial_then_rerun_resumes_from_checkpoint(results):
    overrides = ["--set", "train.epochs=6", "--set", "seeds=[0]"]
    proc = ablate_forked("run", SMOKE, *overrides)
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
    # The interrupted attempt counts as retried, not failed, and used no attempt.
    rows = json.loads(ablate("status", SMOKE, *overrides, "--json").stdout)
    assert sum(r["failed"] for r in rows) == 0 and sum(r["retried"] for r in rows) == 1
    assert {r["attempts"] for r in rows} == {"1/3"}


@pytest.mark.timeout(200)
@pytest.mark.slow
@pytest.mark.usefixtures("seeded_store")
def test_two_workers_on_one_host_run_every_cell_once(results):
    out = ablate("run", SMOKE, "--workers", "2", "--poll", "0.2", "--set", "seeds=[0,1,2]")
    assert out.returncode == 0, out.stderr
    trials = _trials(results)
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["cell"] for t in trials}) == 6
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers took trials
    assert len(_children(results)[2]) == 6


@pytest.mark.timeout(120)
@pytest.mark.slow
@pytest.mark.usefixtures("seeded_store")
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


@pytest.mark.timeout(120)
@pytest.mark.slow
@pytest.mark.usefixtures("seeded_store")
def test_search_selects_on_its_own_split_and_confirmations_train_on_all_images(results):
    """He 2016a: the 45k/5k split chose the recipe; the reported nets trained on all 50k."""
    out = ablate("run", SMOKE, "--set", "dataset.val_size=0", "--set", "search={trials_per_variant: 2, "
                 "pruner: none, val_size: 96, space: {lr: {low: 0.01, high: 0.2, log: true}}}",
                 "--set", "seeds=[0]", "--set", "model.shortcut=A")
    assert out.returncode == 0, out.stderr
    c, parents, children = _children(results)
    by_stage = {stage: [r for r in children if r.data.tags["stage"] == stage] for stage in ("search", "confirm")}
    assert len(by_stage["search"]) == 2 and len(by_stage["confirm"]) == 1
    for r in by_stage["search"]:
        assert r.data.params["data.val_size"] == "96" and "val_error" in r.data.metrics
    confirm = by_stage["confirm"][0]
    assert confirm.data.params["data.val_size"] == "0" and "val_error" not in confirm.data.metrics
    bad = ablate("run", SMOKE, "--set", "dataset.val_size=0", "--set",
                 "search={trials_per_variant: 2, space: {lr: {low: 0.01, high: 0.2}}}", "--set", "name=nosplit")
    assert_one_line_error(bad, "search.val_size")
    assert not (results / "optuna" / "nosplit.journal").exists()


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_a_changed_spec_does_not_silently_join_an_existing_study(smoke_study, smoke_results):
    assert recorded_run(smoke_study).returncode == 0
    assert_one_line_error(ablate("run", SMOKE, "--set", "train.epochs=3"), "different spec")


@pytest.mark.timeout(120)
@pytest.mark.slow
@pytest.mark.usefixtures("seeded_store")
def test_a_failed_cell_is_retried_on_the_next_run_until_its_attempts_run_out(results):
    one = ["--set", "model.shortcut=A", "--set", "seeds=[0]", "--set", "train.epochs=1", "--attempts", "2"]
    cell = "cifar-d8-basic-A-post-w1/seed=0"
    # A file where the cell's checkpoint directory goes: its first checkpoint write fails.
    blocker = results / "checkpoints" / "smoke" / "confirm" / "cifar-d8-basic-A-post-w1" / "seed0"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    first = ablate("run", SMOKE, *one)
    assert first.returncode == 1 and "failed (attempt 1 of 2)" in first.stderr, first.stderr
    second = ablate("run", SMOKE, *one)  # the cell is retried, fails again, and runs out of attempts
    assert second.returncode == 1 and f"gave up on {cell}: failed 2 time(s)" in second.stderr, second.stderr
    rows = json.loads(ablate("status", SMOKE, *one, "--json").stdout)
    assert rows[0]["failed"] == 1 and rows[0]["retried"] == 1 and rows[0]["attempts"] == "2/2"
    blocker.unlink()
    third = ablate("run", SMOKE, *one)  # nothing left to try: still a failure, named
    assert third.returncode == 1 and f"gave up on {cell}" in third.stderr
    assert len(_trials(results)) == 2
    fourth = ablate("run", SMOKE, *one, "--retry-failed")
    assert fourth.returncode == 0, fourth.stderr
    trials = _trials(results)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert [t.user_attrs["attempt"] for t in trials] == [1, 2, 1] and trials[2].user_attrs["retry_of"] == 1
    rows = json.loads(ablate("status", SMOKE, *one, "--json").stdout)
    assert rows[0]["complete"] == 1 and rows[0]["failed"] == 0 and rows[0]["retried"] == 2
    c, parents, children = _children(results)
    assert "RUNNING" not in {r.info.status for r in parents + children}
    assert parents[0].info.status == "FINISHED"


def test_an_unexpected_error_after_the_parent_is_reopened_closes_it(results, monkeypatch):
    from runners import cli
    from runners.study.runner import StudyRunner

    def broken(self):
        raise RuntimeError("a bug")
    monkeypatch.setattr(StudyRunner, "work", broken)
    with pytest.raises(RuntimeError):
        cli.main(["run", str(SMOKE), "--set", "seeds=[0]"])
    c, parents, _ = _children(results)
    assert [p.info.status for p in parents] == ["FAILED"]


def test_journal_verification_repairs_a_torn_tail_and_refuses_damage(tmp_path):
    from runners.errors import ConfigError
    from runners.study.storage import JournalFlock, verify_journal
    journal = tmp_path / "s.journal"
    good = b'{"op_code": 0, "a": 1}\n{"op_code": 1, "b": 2}\n'
    journal.write_bytes(good + b'{"op_code": 5, "tri')
    verify_journal(journal, JournalFlock(str(journal)))
    assert journal.read_bytes() == good
    assert [p.read_bytes() for p in tmp_path.glob("s.journal.torn-*")] == [good + b'{"op_code": 5, "tri']
    for damaged in (b'{"op_code": 0}\nnot json\n{"op_code": 1}\n', good + b"garbage\n", good + b"\x00\x00"):
        journal.write_bytes(damaged)
        with pytest.raises(ConfigError, match="s.journal"):
            verify_journal(journal, JournalFlock(str(journal)))
        assert journal.read_bytes() == damaged  # refused, not touched


def test_the_spec_loader_reads_floats_as_people_write_them(tmp_path):
    from runners.study.spec import load_spec
    spec = tmp_path / "f.yaml"
    spec.write_text("name: f\nmodel: {depth: 8}\ntrain: {lr: 1e-1, weight_decay: 1.0e-4, gamma: 1.0E-1, epochs: 1}\n")
    s = load_spec(spec, ["train.momentum=9e-1", "dataset.name=synthetic"])
    assert (s.train.lr, s.train.weight_decay, s.train.gamma, s.train.momentum) == (0.1, 1e-4, 0.1, 0.9)


def test_one_set_grammar_for_train_and_run(tmp_path):
    from runners.cli import build_parser
    from runners.commands.fields import field_values
    from runners.errors import ConfigError
    from runners.train.config import CONFIG_CLASSES
    from runners.train.config import assemble

    def resolve_configs(args):
        job = assemble(args.model, {s: field_values(args, s, cls) for s, cls in CONFIG_CLASSES.items()}, args.set)
        return job.model, job.arch, job.train, job.data
    from runners.study.spec import load_spec
    args = build_parser("train").parse_args(
        ["train", "resnet20", "--dataset", "synthetic", "--set", "width=2", "--set", "arch.preact=true",
         "--set", "train.milestones=[1, 2]", "--set", "train.milestones.1=3", "--set", "data.val_size=1e2"])
    with pytest.raises(ConfigError, match="must be an int"):  # 1e2 is a float, now read as one
        resolve_configs(args)
    args.set[-1] = "data.val_size=100"
    _, arch, train, data = resolve_configs(args)
    assert arch.width == 2 and arch.preact and train.milestones == (1.0, 3.0) and data.val_size == 100
    for bad, match in (("bogus.lr=1", "the key must be"), ("train.lr", "expected key.path=value"),
                       ("train..lr=1", "empty component")):
        args.set = [bad]
        with pytest.raises(ConfigError, match=match):
            resolve_configs(args)
    spec = tmp_path / "l.yaml"
    spec.write_text("name: l\ndataset: synthetic\nmodel:\n  - {depth: 8}\n  - {depth: 14, shortcut: none}\n")
    assert [v.arch.total_depth for v in load_spec(spec, ["model.1.depth=20"]).variants] == [8, 20]
    with pytest.raises(ConfigError, match="not an index"):
        load_spec(spec, ["model.2.depth=20"])


def test_checkpoint_writes_that_fail_leave_nothing_and_unreadable_ones_are_set_aside(tmp_path, monkeypatch, caplog):
    import errno

    import torch

    from runners.train import checkpoint as trainer
    path = tmp_path / "c" / "checkpoint.pt"
    trainer.save_checkpoint(path, {"version": trainer.CHECKPOINT_VERSION, "x": torch.zeros(3)})

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(trainer.torch, "save", full_disk)
    with pytest.raises(OSError):
        trainer.save_checkpoint(path, {"version": trainer.CHECKPOINT_VERSION})
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # old one kept, no temp file
    assert trainer.load_checkpoint(path)["x"].shape == (3,)
    path.write_bytes(path.read_bytes()[:10])
    with caplog.at_level("WARNING"):
        assert trainer.load_checkpoint(path) is None
    aside = list(path.parent.glob("checkpoint.pt.unreadable-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == 10 and not path.exists()
    assert str(aside[0]) in caplog.text


