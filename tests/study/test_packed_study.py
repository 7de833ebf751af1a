"""A packed study (runners/study/pack.py): cells that pack are claimed and trained together, each
recorded as if alone, and a kill -9 of the pack followed by a rerun finishes every cell once."""
import signal
import time
from collections import Counter

import pytest
from optuna.trial import TrialState

from conftest import REPO, ablate, ablate_forked, assert_one_line_error
from test_study import _children, _trials

SMOKE = REPO / "ablations" / "smoke.yaml"
CELLS = {f"cifar-d8-basic-{s}-post-w1/seed={k}": 1 for s in ("none", "A") for k in (0, 1)}


@pytest.mark.timeout(240)
@pytest.mark.slow
@pytest.mark.usefixtures("seeded_store")
def test_sigkill_of_a_packed_study_then_rerun_finishes_every_cell_once(results):
    """The smoke grid (plain and option-A twins, two seeds) packs as one group of 4: killed with
    SIGKILL after its first checkpoints, rerun, every cell is COMPLETE exactly once, resumed,
    with its whole curve in its own MLflow run; nothing is left RUNNING."""
    overrides = ["--set", "train.epochs=5", "--pack", "4"]
    proc = ablate_forked("run", SMOKE, *overrides)
    checkpoints = results / "checkpoints" / "smoke" / "confirm"
    deadline = time.time() + 150
    while time.time() < deadline and len(list(checkpoints.rglob("checkpoint.pt"))) < 4:
        time.sleep(0.05)
    assert len(list(checkpoints.rglob("checkpoint.pt"))) == 4, "the pack wrote no checkpoints"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [t.state for t in _trials(results)].count(TrialState.RUNNING) == 4  # all four were one pack

    out = ablate("run", SMOKE, *overrides)
    assert out.returncode == 0, out.stderr
    trials = _trials(results)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert Counter(t.user_attrs["cell"] for t in complete) == Counter(CELLS)
    assert TrialState.RUNNING not in {t.state for t in trials}
    assert all(t.user_attrs["resumed"] and t.user_attrs["epochs"] == 5 for t in complete)
    c, parents, children = _children(results)
    assert "RUNNING" not in {r.info.status for r in parents + children}
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert len(finished) == 4 and {r.data.tags["pack"] for r in finished} == {"4"}
    assert len({r.data.tags["pack_id"] for r in finished}) == 1  # trained as one pack
    assert {t.user_attrs["mlflow_run_id"] for t in complete} == {r.info.run_id for r in finished}
    for r in finished:  # each its own whole curve, the epochs before the kill included
        assert len(c.get_metric_history(r.info.run_id, "train_error")) == 5
    assert not list(checkpoints.rglob("checkpoint.pt"))  # the weights are in MLflow now


def test_dry_run_shows_the_packs_and_their_gpu_hours(results):
    """The smoke grid's four cells (plain and option-A twins of two seeds) form one pack of 4."""
    out = ablate("run", SMOKE, "--dry-run", "--pack", "4")
    assert out.returncode == 0, out.stderr
    assert "packs of up to 4" in out.stdout and "1 packs, estimated" in out.stdout
    assert "cifar-d8-basic-none-post-w1 seeds 0,1; cifar-d8-basic-A-post-w1 seeds 0,1" in out.stdout
    assert not results.exists()  # nothing written


def test_resources_pack_is_checked_and_leaves_the_study_identity_alone(tmp_path):
    from runners.study.spec import load_spec
    assert load_spec(SMOKE, ["resources.pack=4"]).fingerprint == load_spec(SMOKE).fingerprint
    assert load_spec(SMOKE, ["resources.pack=auto"]).resources.pack == "auto"
    for value, words in (("0", "resources.pack must be a positive integer or auto"),
                         ("many", "resources.pack must be a positive integer or auto")):
        assert_one_line_error(ablate("run", SMOKE, "--dry-run", "--pack", value), words)
    spec = tmp_path / "s.yaml"
    spec.write_text(SMOKE.read_text() + "resources:\n  pack: 2\n  gpus_per_trial: 2\n")
    assert_one_line_error(ablate("run", spec, "--dry-run"), "does not combine with resources.gpus_per_trial")


def test_dry_run_json_carries_the_packs(results):
    import json
    out = ablate("run", SMOKE, "--dry-run", "--json", "--pack", "3")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["pack"]["k"] == 3 and [p["size"] for p in doc["pack"]["packs"]] == [3, 1]
    assert all(p["gpu_hours"] <= p["alone_gpu_hours"] for p in doc["pack"]["packs"])


@pytest.mark.timeout(240)
@pytest.mark.slow
@pytest.mark.usefixtures("seeded_store")
def test_a_pack_member_retried_elsewhere_stops_alone_and_the_others_finish(results, monkeypatch):
    """A worker paused past its heartbeat grace finds, when it wakes, that another worker failed
    one of its pack's trials (closed its MLflow run KILLED, enqueued its retry). The takeover is
    played at that member's first write after epoch 1: that member writes nothing more (no
    checkpoint, no metric, its run stays KILLED), the pack's three others finish in the same
    pack, and the retry trains the cell once."""
    from runners.study import optuna_private as private, pack as pack_mod, parent
    real_owned, real_run_pack, seen = pack_mod.owned, pack_mod.run_pack, {}

    def owned(study, trial, worker):
        guard = real_owned(study, trial, worker)

        def wake():
            if "number" not in seen:  # the other worker's move, while this one was stopped
                failed = private.fail(study, private.trial_id(trial))
                run_id = failed.user_attrs["mlflow_run_id"]
                parent.supersede(worker.mlflow, run_id)
                seen["layout"].requeue(study, failed)
                seen.update(number=trial.number, run=run_id, checkpoint=failed.user_attrs["checkpoint"])
            guard()
        return wake

    def run_pack(layout, worker, claimed):
        seen.setdefault("layout", layout)
        failed = real_run_pack(layout, worker, claimed)
        if len(claimed) == 4:  # the pack is over: what did the abandoned member leave?
            seen["left"] = ((results / "checkpoints" / "smoke" / seen["checkpoint"] / "checkpoint.pt").exists(),
                            worker.mlflow.get_run(seen["run"]).info.status,
                            worker.mlflow.get_metric_history(seen["run"], "train_error"))
            seen["pack_done"] = [private.get_trial(s, private.trial_id(t)).state for s, t in claimed]
        return failed

    monkeypatch.setattr(pack_mod, "owned", owned)
    monkeypatch.setattr(pack_mod, "run_pack", run_pack)
    from runners.study import runner as runner_mod
    monkeypatch.setattr(runner_mod, "run_pack", run_pack)
    out = ablate("run", SMOKE, "--pack", "4")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if "given to another worker" in line], out.stderr
    assert seen["left"] == (False, "KILLED", []), seen["left"]
    assert sorted(map(str, seen["pack_done"])) == ["TrialState.COMPLETE"] * 3 + ["TrialState.FAIL"]
    trials = _trials(results)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert Counter(t.user_attrs["cell"] for t in complete) == Counter(CELLS)
    assert TrialState.RUNNING not in {t.state for t in trials}
    c, parents, children = _children(results)
    assert "RUNNING" not in {r.info.status for r in parents + children}
    status = {r.info.run_id: r.info.status for r in children}
    assert status[seen["run"]] == "KILLED" and list(status.values()).count("FINISHED") == 4
