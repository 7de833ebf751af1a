import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Tests run two at a time (pytest -n 2): each, and every process it starts, takes one thread,
    # since two processes with two threads each on two cores run many times slower than one.
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """An isolated results/ directory (stores, checkpoints, figures) for this test."""
    path = tmp_path / "results"
    monkeypatch.setenv("ABLATE_RESULTS", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return path


@pytest.fixture(scope="session")
def _empty_mlflow_store(tmp_path_factory) -> Path:
    from runners.tracking.store import client
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client(f"sqlite:///{path}").search_experiments()  # MLflow creates and migrates its tables
    return path


@pytest.fixture
def seeded_store(results, _empty_mlflow_store) -> Path:
    """results/ holding an empty MLflow store whose tables exist: creating them costs each study
    test ~2 s of MLflow's migrations. Tests that check what a command creates do not use it."""
    import shutil
    results.mkdir(parents=True, exist_ok=True)
    shutil.copy(_empty_mlflow_store, results / "mlflow.db")
    return results


def ablate(*args, timeout=300, **popen) -> subprocess.CompletedProcess:
    """Run the `ablate` CLI in a subprocess from the repository root."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **popen.pop("env", {})}
    return subprocess.run([sys.executable, "-m", "runners.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, **popen)


def assert_one_line_error(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    for f in fragments:
        assert f in out.stderr, (f, out.stderr)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def rank_pid(root: int, rank: int) -> int | None:
    """The pid of torch.distributed rank `rank` among the descendants of process `root`."""
    for pid in _descendants(root):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and any(e.startswith(b"LOCAL_RANK=") for e in env):
            return pid
    return None
