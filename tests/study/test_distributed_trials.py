"""A study trial on several processes (resources.gpus_per_trial; gloo on the CPU): rank 0 claims
the trial and alone writes to Optuna and MLflow, search suggestions and pruning decisions reach
every rank, and a group that loses a rank is started again and resumes the trial."""
import os
import signal
import socket
import time
from collections import Counter

import optuna
import pytest
import torch
import torch.multiprocessing as mp
from optuna.trial import TrialState

from conftest import ablate, ablate_forked, assert_one_line_error, rank_pid
from runners.study.host import worker_devices
from runners.train import distributed
from test_study import SMOKE, _children, _trials

GROUP = ["--set", "resources.gpus_per_trial=2", "--set", "seeds=[0]", "--set", "model.shortcut=A"]


@pytest.mark.timeout(200)
@pytest.mark.slow
@pytest.mark.usefixtures("seeded_store")
def test_a_searched_study_on_two_processes_records_each_trial_once(results):
    search = ["--set", "search={trials_per_variant: 2, space: {lr: {low: 0.01, high: 0.2, log: true}}}"]
    out = ablate("run", SMOKE, *GROUP, *search, "--set", "train.epochs=2")
    assert out.returncode == 0, out.stderr
    assert "1 worker(s) of 2 processes" in out.stdout
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(results / "optuna" / "smoke.journal")))
    search_trials = optuna.load_study(study_name="smoke:search:cifar-d8-basic-A-post-w1", storage=storage).trials
    assert [t.state for t in search_trials] == [TrialState.COMPLETE] * 2
    for t in search_trials:  # rank 0's suggestion, trained by both ranks, reported once per epoch
        assert 0.01 <= t.params["lr"] <= 0.2 and sorted(t.intermediate_values) == [1, 2]
    assert [t.state for t in _trials(results)] == [TrialState.COMPLETE]
    c, parents, children = _children(results)
    assert len(parents) == 1 and Counter(r.data.tags["stage"] for r in children) == Counter(search=2, confirm=1)
    assert {r.data.tags["processes"] for r in children} == {"2"}
    assert {r.info.status for r in parents + children} == {"FINISHED"}
    for r in children:
        assert len(c.get_metric_history(r.info.run_id, "val_error")) == 2  # logged by rank 0 alone


@pytest.mark.timeout(300)
@pytest.mark.slow
@pytest.mark.usefixtures("seeded_store")
def test_a_group_that_loses_a_rank_is_started_again_and_resumes_the_trial(results):
    proc = ablate_forked("run", SMOKE, *GROUP, "--set", "train.epochs=6")
    checkpoints = results / "checkpoints" / "smoke" / "confirm"
    deadline = time.time() + 120
    while time.time() < deadline and not any(checkpoints.rglob("*.pt")) and proc.poll() is None:
        time.sleep(0.05)
    victim = rank_pid(proc.pid, 1)
    assert victim is not None and any(checkpoints.rglob("*.pt")), proc.communicate(timeout=60)
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err  # torchrun started the group again; the study finished

    trials = _trials(results)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    interrupted, retry = trials
    assert retry.user_attrs["retry_of"] == interrupted.number and "error" not in interrupted.user_attrs
    assert retry.user_attrs["resumed"] is True and retry.user_attrs["epochs"] == 6
    c, _, children = _children(results)
    assert Counter(r.info.status for r in children) == Counter(KILLED=1, FINISHED=1)
    assert len(c.get_metric_history(retry.user_attrs["mlflow_run_id"], "val_error")) == 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pruned_rank(rank: int, port: int, checkpoint: str, outcome) -> None:
    from runners.study.spec import load_spec
    from runners.study.trial import Worker
    from runners.study import trial as trial_module
    from runners.train.data import load_dataset
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    distributed.init(torch.device("cpu"))
    try:
        spec = load_spec(SMOKE, ["model.shortcut=A", "train.epochs=4",
                                 "search={trials_per_variant: 1, space: {lr: {low: 0.01, high: 0.2}}}"])
        data = load_dataset(spec.data_of("search"))
        worker = Worker(None, "", lambda stage: data, "cpu", 1)
        attrs = {"stage": "search", "variant": spec.variants[0].key, "seed": 0, "checkpoint": checkpoint}
        trial = None
        if rank == 0:  # a pruner that prunes at the first report
            study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
            trial = study.ask()
        try:
            trial_module._fit(spec, attrs, worker, trial, None)
        except optuna.TrialPruned:
            outcome.put((rank, "pruned", sorted(trial.study.trials[0].intermediate_values) if trial else None))
        else:
            outcome.put((rank, "trained", None))
        # Both ranks here before either leaves the group: rank 0 hosts the group's store, and a
        # rank still talking to it when it goes away aborts (SIGABRT, "terminate called ...").
        torch.distributed.barrier()
    finally:
        distributed.finish()


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_pruning_decision_reaches_every_rank_at_the_same_epoch(tmp_path):
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_pruned_rank, args=(_free_port(), str(tmp_path / "ckpt"), queue), nprocs=2, join=True)
    outcomes = sorted(queue.get() for _ in range(2))
    assert outcomes == [(0, "pruned", [1]), (1, "pruned", None)]


def test_worker_groups_take_disjoint_gpus_from_the_visible_list():
    assert worker_devices(2, 4, None, per_worker=2) == ["0,1", "2,3"]
    assert worker_devices(1, 8, "GPU-a,GPU-b,GPU-c,GPU-d,4,5,6,7", per_worker=4) == ["GPU-a,GPU-b,GPU-c,GPU-d"]
    assert worker_devices(3, 2, None) == ["0", "1", "0"]  # single-GPU workers share round robin


def test_a_group_larger_than_the_visible_gpus_is_refused_in_one_line(results, monkeypatch):
    from runners.cli import main
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    code = main(["run", str(SMOKE), "--set", "resources.gpus_per_trial=4"])
    assert code == 2 and not results.exists()


@pytest.mark.parametrize("args, fragment", [
    (["--device", "cuda:1"], "use --device cuda"),
    (["--workers-per-gpu", "2"], "takes them whole"),
])
def test_group_options_that_cannot_work_are_refused(results, args, fragment):
    out = ablate("run", SMOKE, "--set", "resources.gpus_per_trial=2", *args)
    assert_one_line_error(out, fragment)
    assert not results.exists()


def test_a_worker_in_a_group_of_the_wrong_size_is_refused(results):
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    out = ablate("worker", SMOKE, "--set", "resources.gpus_per_trial=2", env=env)
    assert_one_line_error(out, "gpus_per_trial is 2", "1 processes")
    assert not results.exists()


def test_a_group_is_started_again_only_when_it_failed_not_when_its_study_had_failed_cells(monkeypatch, capsys):
    import sys

    from runners.study import group
    from runners.study.progress import StudyProgress
    progress = StudyProgress(sys.stdout, 0, errors=sys.stderr)

    def fake(outcomes):
        calls = []

        def launch(nproc, argv):
            code, status = outcomes[len(calls)]
            calls.append(argv)
            if status is not None:  # what rank 0 leaves when the group finished its loop
                with open(os.environ[group.GROUP_STATUS], "w") as f:
                    f.write(str(status))
            return code
        monkeypatch.setattr(distributed, "launch", launch)
        return calls

    calls = fake([(0, 1)])  # finished, a cell failed: exit 1, no new group
    assert group.launch_group(2, ["worker", "s.yaml"], 3, progress) == 1 and len(calls) == 1
    calls = fake([(1, None), (1, None), (0, 0)])  # two crashed groups, then one that finished
    assert group.launch_group(2, ["worker", "s.yaml"], 3, progress) == 0 and len(calls) == 3
    assert capsys.readouterr().err.count("starting a new one") == 2
    calls = fake([(1, None)] * 3)
    assert group.launch_group(2, ["worker", "s.yaml"], 2, progress) == 1 and len(calls) == 3
    calls = fake([(143, None)])  # stopped: no new group
    assert group.launch_group(2, ["worker", "s.yaml"], 3, progress) == 143 and len(calls) == 1
