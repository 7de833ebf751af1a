"""Signals that stop a study: SIGHUP (a closed terminal or ssh session) is handled as SIGTERM:
the runs are closed, the command exits 129, and a rerun resumes; and what a stopped or
spawned command puts on a command line holds no store URL."""
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO
from runners.study.runner import without_store_options


@pytest.mark.usefixtures("seeded_store")
def test_sighup_closes_the_runs_and_exits_129(results):
    args = ["--set", "train.epochs=6", "--set", "seeds=[0]", "--set", "model.shortcut=A"]
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


def test_store_options_are_taken_off_a_command_line():
    argv = ["worker", "s.yaml", "--storage", "postgresql://u:pw@h/db", "--tracking-uri=http://u:pw@m", "--poll", "1"]
    assert without_store_options(argv) == ["worker", "s.yaml", "--poll", "1"]
