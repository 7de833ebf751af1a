"""`ablate analyze`: a finished study analysed once from MLflow alone, a rerun does nothing;
`--init` draws signal propagation for every variant of a spec never trained; bad input is one line."""
import json

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, ablate, assert_one_line_error

SMOKE = REPO / "ablations" / "smoke.yaml"
TABLE2 = REPO / "ablations" / "he2016b-table2.yaml"
ONE_EPOCH = ["--set", "train.epochs=1"]
SMALL = ["--images", "60", "--draws", "2", "--train-images", "32", "--grid", "5", "--grid2d", "3",
         "--cka-images", "48", "--cka-batch", "24", "--sweep-points", "8", "--sweeps", "2",
         "--grad-batch", "16", "--signal-images", "16"]
FILES = {"lesion": ["lesion"], "landscape": ["landscape_1d", "landscape_2d"], "cka": ["cka"],
         "gradients": ["gradients"], "signal": ["signal"]}


@pytest.mark.slow
@pytest.mark.usefixtures("seeded_store")
def test_a_finished_study_is_analysed_once_and_logged_and_a_rerun_does_nothing(results):
    assert ablate("run", SMOKE, *ONE_EPOCH).returncode == 0
    out = ablate("analyze", SMOKE, *ONE_EPOCH, *SMALL)
    assert out.returncode == 0, out.stderr
    assert "[1/24]" in out.stdout and "[24/24]" in out.stdout and "ETA" in out.stdout
    folder = results / "figures" / "smoke" / "analysis"
    for name, stems in FILES.items():
        data = json.loads((folder / f"{name}.json").read_text())
        assert data["analysis"] == name and len(data["runs"]) == 4 and data["logged"]
        for stem in stems:
            assert (folder / f"{stem}.png").stat().st_size > 0 and (folder / f"{stem}.pdf").is_file()
    lesion = json.loads((folder / "lesion.json").read_text())
    [pair] = lesion["summary"]["paired_single_increase"]
    assert pair["plain"] == "plain-8" and pair["residual"] == "ResNet-8 (A)" and pair["n"] == 2
    cka = json.loads((folder / "cka.json").read_text())
    assert len([k for k in cka["units"] if k.startswith("twin:")]) == 2  # one twin pair per seed

    c = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = c.get_experiment_by_name("smoke")
    [parent] = c.search_runs([exp.experiment_id], filter_string="tags.stage = 'study'")
    logged = {f.path for f in c.list_artifacts(parent.info.run_id, "analysis")}
    assert {f"analysis/{n}.json" for n in FILES} <= logged and "analysis/lesion.png" in logged

    mtimes = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = ablate("analyze", SMOKE, *ONE_EPOCH, *SMALL)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already done") == 5 and "nothing to do" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes

    # A changed option reruns that analysis only.
    one = ablate("analyze", SMOKE, *ONE_EPOCH, *SMALL[:-1], "12", "--only", "signal,lesion")
    assert one.returncode == 0, one.stderr
    assert "lesion: already done" in one.stdout and "[4/4] signal" in one.stdout

    # An unfinished study is refused, and nothing is written.
    c.update_run(parent.info.run_id, "RUNNING")
    bad = ablate("analyze", SMOKE, *ONE_EPOCH, *SMALL)
    assert_one_line_error(bad, "not finished")
    c.update_run(parent.info.run_id, "FINISHED")


@pytest.mark.slow
def test_init_draws_signal_propagation_for_every_activation_order_without_training(results):
    shrink = ["--set", "model.0.depth=14", "--set", "model.1.depth=11", "--set", "seeds=2"]
    out = ablate("analyze", "--init", TABLE2, *shrink, "--signal-images", "16")
    assert out.returncode == 0, out.stderr
    folder = results / "figures" / "he2016b-table2" / "analysis"
    data = json.loads((folder / "signal.json").read_text())
    labels = [row["variant"] for row in data["summary"]["final_var"]]
    assert len(labels) == 10 and all(row["n"] == 2 for row in data["summary"]["final_var"])
    for order in ("bn-after-add", "relu-before-add", "relu-preact", "preact"):
        assert sum(order in lab.split("(")[1] for lab in labels) >= 2, (order, labels)
    assert (folder / "signal.png").is_file() and (folder / "signal.pdf").is_file()
    assert not (results / "mlflow.db").exists() and not (results / "optuna").exists()  # nothing trained
    again = ablate("analyze", "--init", TABLE2, *shrink, "--signal-images", "16")
    assert "already done" in again.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--only", "lesion,nonsense"], "unknown analysis nonsense"),
    (["--init", "--only", "lesion"], "only signal"),
    (["--grid", "4"], "--grid must be odd"),
    (["--tracking-uri", "sqlite:////nonexistent/dir/mlflow.db"], "no MLflow store"),
    ([], "no MLflow store"),
])
def test_bad_input_is_one_line_and_writes_nothing(results, args, fragment):
    out = ablate("analyze", SMOKE, *args)
    assert_one_line_error(out, fragment)
    assert not results.exists()


@pytest.mark.usefixtures("seeded_store")
def test_an_unknown_study_is_one_line_and_writes_nothing(results):
    out = ablate("analyze", SMOKE, "--set", "name=never-run")
    assert_one_line_error(out, "no experiment named 'never-run'")
    assert not (results / "figures").exists()
