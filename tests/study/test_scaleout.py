"""Scale-out: identical `ablate worker`s against PostgreSQL (Optuna) and a database MLflow store.

Each worker is a separate process (forked from the test's: conftest.Forked), as it would be on
separate machines; they share only the two databases and the checkpoint directory.
"""
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import REPO, Forked, ablate, ablate_forked, assert_one_line_error

SMOKE = REPO / "ablations" / "smoke.yaml"
SERVER = "postgresql://postgres@127.0.0.1:5432"


def _postgres_up() -> bool:
    try:
        import psycopg
        psycopg.connect(f"{SERVER}/postgres", connect_timeout=3).close()
        return True
    except Exception:  # noqa: BLE001
        return False


pytestmark = [pytest.mark.postgres, pytest.mark.skipif(
    not _postgres_up() and not os.environ.get("CI"),
    reason="PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)")]


@pytest.fixture
def databases():
    """Two fresh databases (Optuna, MLflow), dropped afterwards. The Optuna URL carries a
    password (the local server uses trust auth and ignores it) to check it never leaks."""
    import psycopg
    names = [f"ablate_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("optuna", "mlflow")]
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        for n in names:
            conn.execute(f'CREATE DATABASE "{n}"')
    yield f"postgresql://postgres:hunter2@127.0.0.1:5432/{names[0]}", f"{SERVER}/{names[1]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        for n in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')


def _worker(storage, tracking, *extra):
    return ablate_forked("worker", SMOKE, "--storage", storage, "--tracking-uri", tracking, "--threads", "1",
                         "--heartbeat", "1", "--poll", "0.3", *extra)


def _runs(tracking):
    c = MlflowClient(tracking)
    exp = c.get_experiment_by_name("smoke")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    return c, [r for r in runs if r.data.tags.get("stage") != "study"], \
        [r for r in runs if r.data.tags.get("stage") == "study"]


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_three_workers_started_at_once_run_every_trial_exactly_once(results, databases):
    storage, tracking = databases
    seeds = ["--set", "seeds=[0,1,2]"]
    procs = [_worker(storage, tracking, *seeds) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-2000:] for o in outs]

    study = optuna.load_study(study_name="smoke", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert Counter(t.user_attrs["cell"] for t in trials) == Counter(
        {f"cifar-d8-basic-{s}-post-w1/seed={k}": 1 for s in ("none", "A") for k in range(3)})
    c, children, parents = _runs(tracking)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # one parent despite the race
    assert len(children) == 6 and {r.info.status for r in children} == {"FINISHED"}
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in children}
    # Credentials never reach MLflow.
    for run in children + parents:
        assert "hunter2" not in str(run.data.params) + str(run.data.tags)
    assert "***" in parents[0].data.tags["storage"]


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_a_killed_worker_is_retried_by_the_survivors(results, databases):
    storage, tracking = databases
    extra = ["--set", "seeds=[0,1]", "--set", "train.epochs=8"]
    victim = _worker(storage, tracking, *extra)
    # Wait until the victim is inside a trial with a checkpoint, then kill it without warning.
    checkpoints = results / "checkpoints" / "smoke"
    deadline = time.time() + 180
    while time.time() < deadline and not any(checkpoints.rglob("*.pt")):
        time.sleep(0.05)
    assert any(checkpoints.rglob("*.pt")), victim.communicate(timeout=5)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    survivors = [_worker(storage, tracking, *extra) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in survivors]
    assert [p.returncode for p in survivors] == [0, 0], [o[1][-2000:] for o in outs]

    trials = optuna.load_study(study_name="smoke", storage=storage).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len({t.user_attrs["cell"] for t in complete}) == 4
    dead = [t for t in trials if t.state == TrialState.FAIL]
    assert len(dead) == 1
    retry = next(t for t in complete if t.user_attrs.get("retry_of") == dead[0].number)
    assert retry.user_attrs["cell"] == dead[0].user_attrs["cell"]
    assert retry.user_attrs["resumed"] is True  # from the dead attempt's checkpoint
    c, children, parents = _runs(tracking)
    assert c.get_run(dead[0].user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert "RUNNING" not in {r.info.status for r in children + parents}
    assert len([r for r in children if r.info.status == "FINISHED"]) == 4


# `ablate worker` that stops itself with SIGSTOP (as `kill -STOP`, a VM pause or a swap storm
# would stop it) right after its first checkpoint: the moment is exact, the stop the kernel's.
PAUSE_AFTER_FIRST_CHECKPOINT = r"""
import os, signal, sys
from runners.train import trainer
real = trainer.save_checkpoint
def save_checkpoint(path, state):
    real(path, state)
    if state["epoch"] == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
trainer.save_checkpoint = save_checkpoint
from runners.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.faults
@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_worker_stopped_past_its_grace_wakes_to_write_nothing_for_its_retried_cell(results, databases):
    """One cell. Its worker is SIGSTOPped mid-trial, past the heartbeat grace (3 x 1 s); a second
    worker fails the trial as stale, closes its run KILLED, retries the cell from its checkpoint
    and trains it to the end. Then SIGCONT: the woken worker finds its trial no longer its own
    at its next write and says so in one line; it writes no metric, no checkpoint and no run state
    for the cell, and exits 0. The cell was trained once: one FINISHED run, the retry's."""
    storage, tracking = databases
    one_cell = ["--set", "model.shortcut=A", "--set", "seeds=[0]"]
    paused = Forked(PAUSE_AFTER_FIRST_CHECKPOINT, "worker", SMOKE, "--storage", storage, "--tracking-uri", tracking,
                    "--threads", "1", "--heartbeat", "1", "--poll", "0.3", *one_cell)
    try:
        deadline = time.monotonic() + 90
        while not _stopped(paused.pid):
            assert paused.poll() is None and time.monotonic() < deadline, paused.communicate(timeout=5)
            time.sleep(0.05)
        [first] = optuna.load_study(study_name="smoke", storage=storage).get_trials()
        c = MlflowClient(tracking)
        stopped_run = first.user_attrs["mlflow_run_id"]
        logged = c.get_metric_history(stopped_run, "train_error")
        assert len(logged) == 1  # epoch 1's, then the checkpoint, then the stop

        survivor = _worker(storage, tracking, *one_cell)
        out, err = survivor.communicate(timeout=90)
        assert survivor.returncode == 0, err[-3000:]
        assert _stopped(paused.pid)  # it slept through the retry
    finally:
        paused.send_signal(signal.SIGCONT)
    out, err = paused.communicate(timeout=60)
    assert paused.returncode == 0, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "trial 0" in lines[0] and "was given to another worker while this one was paused" in lines[0], lines

    trials = optuna.load_study(study_name="smoke", storage=storage).get_trials()
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "FAIL"], trials
    retry = next(t for t in trials if t.state == TrialState.COMPLETE)
    assert retry.user_attrs["retry_of"] == first.number and retry.user_attrs["resumed"] is True
    c, children, parents = _runs(tracking)
    assert {r.info.run_id: r.info.status for r in children} == {stopped_run: "KILLED",
                                                                 retry.user_attrs["mlflow_run_id"]: "FINISHED"}
    assert c.get_metric_history(stopped_run, "train_error") == logged  # nothing more from the woken worker
    assert [r.info.status for r in parents] == ["FINISHED"]
    assert not list((results / "checkpoints").rglob("checkpoint.pt*")) and not list(results.rglob("*.tmp"))


@pytest.mark.parametrize("url", [
    "postgresql://postgres:hunter2@127.0.0.1:1/ablate",  # nothing listens on port 1
    "postgresql://nobody:hunter2@127.0.0.1:5432/postgres",  # no such role
    "postgresql://postgres:hunter2@no-such-host.invalid:5432/ablate",
])
def test_unreachable_or_refused_storage_is_one_redacted_line(results, url):
    out = ablate("worker", SMOKE, "--storage", url, timeout=60)
    assert_one_line_error(out, "cannot reach the Optuna storage", "postgres:***@" if "//postgres:" in url else "***@")
    assert "hunter2" not in out.stderr + out.stdout
    out = ablate("run", SMOKE, "--tracking-uri", url, timeout=60)
    assert_one_line_error(out, "cannot reach the MLflow tracking store")
    assert "hunter2" not in out.stderr + out.stdout
