"""`ablate ui [SPEC]`: the MLflow UI on the lab's store on a free port, the study's comparison link
for that port, and a clean stop on Ctrl-C or SIGTERM (the server's process reaped, no traceback)."""
import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest

from conftest import REPO, ablate, assert_one_line_error
from runners.tracking import view
from runners.tracking.store import client

SMOKE = REPO / "ablations" / "smoke.yaml"


@pytest.fixture
def store(tmp_path):
    """A store holding the smoke study's experiment, one finished confirmation run in it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = client(uri)
    exp = c.create_experiment("smoke")
    run = c.create_run(exp, run_name="plain-8 s0", tags={"stage": "confirm", "depth": "8", "shortcut": "none"})
    c.log_metric(run.info.run_id, "test_error", 0.5, step=1)
    c.set_terminated(run.info.run_id)
    view.publish_comparison_view(c, exp)
    return uri


def _start(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # SIGINT as a terminal's foreground job has it: a suite started in the background (`pytest &`)
    # hands its children SIGINT ignored, and Python then installs no KeyboardInterrupt for it.
    return subprocess.Popen([sys.executable, "-m", "runners.cli", "ui", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.timeout(300)
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ui_serves_the_store_prints_the_link_for_its_port_and_stops_cleanly(store, sig, code):
    proc = _start(SMOKE, "--tracking-uri", store)
    try:
        first = proc.stdout.readline()
        link = proc.stdout.readline()
        base = re.search(r"MLflow UI on (http://127\.0\.0\.1:(\d+))", first)
        assert base, (first, proc.stderr.read() if proc.poll() is not None else "")
        assert link.strip().startswith(f"smoke: {base[1]}/#/experiments/") and "viewStateShareKey=" in link
        assert "workflowType=machine_learning" in link
        with urllib.request.urlopen(f"{base[1]}/health", timeout=10) as r:
            assert r.status == 200
        proc.send_signal(sig)  # Ctrl-C, or a scheduler's stop
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(OSError):  # the server went with it
        urllib.request.urlopen(f"{base[1]}/health", timeout=5)
    # The link the UI printed is the published view's (refreshed for this port).
    key = client(store).get_experiment_by_name("smoke").tags[view.VIEW_TAG]
    assert f"viewStateShareKey={key}" in link


def test_ui_refuses_a_missing_store_an_unknown_study_and_a_taken_port(tmp_path, store):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert_one_line_error(ablate("ui", "--tracking-uri", missing), "no MLflow store at")
    assert not (tmp_path / "none.db").exists()  # nothing created
    assert_one_line_error(ablate("ui", REPO / "ablations" / "cpu-demo.yaml", "--tracking-uri", store),
                          "has no study 'cpu-demo'")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert_one_line_error(ablate("ui", "--tracking-uri", store, "--port", s.getsockname()[1]), "is in use")
