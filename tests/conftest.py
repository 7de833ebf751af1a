import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """An isolated results/ directory (stores, checkpoints, figures) for this test."""
    path = tmp_path / "results"
    monkeypatch.setenv("ABLATE_RESULTS", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return path


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
