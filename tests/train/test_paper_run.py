"""The prepared GPU run (runners/doctor/paper.py) at CPU scale, with torch alone: it measures the
pack rates, trains seed 0 of plain-20 and ResNet-20 as one pack, then more seeds as fit, and
leaves each run's curves and final test error in the JSON; out of budget, a run is `cut`."""
import json
import subprocess
import sys

import pytest

from conftest import REPO

HIDE = "import sys; sys.modules.update(optuna=None, mlflow=None, tqdm=None); "  # as the GPU machine


def paper(tmp_path, *args):
    out_file = tmp_path / "paper.json"
    argv = ["--data", "synthetic", "--subset", "300", "--device", "cpu", "--json", str(out_file), *args]
    code = HIDE + f"from runners.doctor.paper import main; sys.exit(main({argv!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "ABLATE_RESULTS": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out_file.read_text()), out.stdout


@pytest.mark.timeout(240)
@pytest.mark.slow
def test_the_paper_run_trains_packs_and_leaves_every_run_in_the_json(tmp_path):
    doc, stdout = paper(tmp_path, "--iterations", "2", "--budget", "200", "--max-seeds", "2")
    assert [r["k"] for r in doc["pack_rates"]] == [2, 4]
    runs = doc["runs"]
    assert [(r["model"], r["seed"], r["pack"]) for r in runs[:2]] == [("plain20", 0, "2"), ("resnet20", 0, "2")]
    assert all(r["status"] == "finished" and 0 <= r["final_test_error"] <= 1 for r in runs)
    assert all(r["epochs"][-1]["iteration"] == 2 for r in runs)  # 300 images / 128: 2 steps an epoch
    if doc["plan"]["chosen"]:  # the seeds that the first pack's time said would fit
        assert [(r["seed"], r["pack"]) for r in runs[2:]] == [(1, "4"), (1, "4"), (2, "4"), (2, "4")]
    assert "resnet20 seed 0 (pack 2): finished" in stdout


@pytest.mark.timeout(240)
@pytest.mark.slow
def test_out_of_budget_a_run_is_cut_with_the_epochs_it_reached(tmp_path):
    doc, _ = paper(tmp_path, "--iterations", "6", "--budget", "0", "--max-seeds", "1")
    assert [r["status"] for r in doc["runs"]] == ["cut", "cut"]  # stopped after its first epoch
    assert all(len(r["epochs"]) == 1 and "final_test_error" not in r for r in doc["runs"])
    assert doc["plan"]["chosen"] == 0
