"""Scale-out: identical `ablate worker`s against PostgreSQL (Optuna) and a database MLflow store.

Each worker is a separate process (forked from the test's: conftest.Forked), as it would be on
separate machines; they share only the two databases and the checkpoint directory.
"""
import os
import signal
import time
import uuid
from collections import Counter

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import REPO, ablate, ablate_forked, assert_one_line_error

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
