"""Signals that stop a study: SIGHUP (a closed terminal or ssh session) is handled as SIGTERM:
the runs are closed, the command exits 129, and the rerun says what it found and resumes the
interrupted cell first; and what a spawned command puts on a command line holds no store URL."""
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO
from runners.study.runner import without_store_options


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("seeded_store")
def test_sighup_closes_the_runs_exits_129_and_the_rerun_resumes_the_interrupted_cell_first(results):
    args = ["--set", "train.epochs=6", "--set", "seeds=[0,1]", "--set", "model.shortcut=A"]
    cmd = [sys.executable, "-m", "runners.cli", "run", str(REPO / "ablations" / "smoke.yaml"), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    checkpoints = results / "checkpoints" / "smoke"
    deadline = time.time() + 120
    while time.time() < deadline and not any(checkpoints.rglob("*.pt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 129, err
    assert "Traceback" not in err and "interrupted" in err
    c = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("smoke").experiment_id])
    assert runs and "RUNNING" not in {r.info.status for r in runs}

    # The rerun says what it found, and the interrupted cell (seed 0, behind seed 1 in the queue)
    # goes first, from its checkpoint.
    again = subprocess.run(cmd, cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert "found smoke: 0 finished, 1 interrupted, resuming first, 1 waiting" in lines, lines[:5]
    started = [line for line in lines if ": started" in line]
    assert "s0" in started[0] and "(resuming)" in started[0], started


def test_store_options_are_taken_off_a_command_line():
    argv = ["worker", "s.yaml", "--storage", "postgresql://u:pw@h/db", "--tracking-uri=http://u:pw@m", "--poll", "1"]
    assert without_store_options(argv) == ["worker", "s.yaml", "--poll", "1"]
