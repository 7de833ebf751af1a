"""Fault injection: kill -9 mid-write, a full disk, a torn journal, a deleted store, a corrupt
checkpoint, a tracking server killed mid-run. After each, one rerun of `ablate run` completes the
study with every cell exactly once and no MLflow run left RUNNING. Run alone with `pytest -m faults`.

A kill lands at an exact moment by running the CLI under a small wrapper (INJECT) that patches
the write in question to write part of its bytes and then SIGKILL its own process (a process
forked from the test's: conftest.Forked).
"""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from conftest import REPO, Forked, ablate

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(180)]

SMOKE = REPO / "ablations" / "smoke.yaml"
# One variant, two seeds, two epochs on 128 images: two cells, a second each.
SMALL = ["--set", "model.shortcut=A", "--set", "seeds=[0,1]", "--set", "dataset.subset=192",
         "--set", "dataset.val_size=64"]
CELLS = {"cifar-d8-basic-A-post-w1/seed=0", "cifar-d8-basic-A-post-w1/seed=1"}

INJECT = r"""
import os, signal, sys
fault, args = sys.argv[1], sys.argv[2:]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if fault == "checkpoint":  # the second checkpoint write dies half-written
    import torch
    real, calls = torch.save, []
    def save(obj, f, *a, **k):
        if hasattr(f, "write") and ".tmp" in getattr(f, "name", ""):
            calls.append(1)
            if len(calls) == 2:
                f.write(b"\x80\x02half a checkpoint"); f.flush(); die()
        return real(obj, f, *a, **k)
    torch.save = save
elif fault == "journal":  # the record naming the second trial's MLflow run is cut mid-write
    from optuna.storages.journal import JournalFileBackend
    real, calls = JournalFileBackend.append_logs, []
    def append_logs(self, logs):
        import json
        text = "\n".join(json.dumps(l, separators=(",", ":")) for l in logs) + "\n"
        if "mlflow_run_id" in text:
            calls.append(1)
            if len(calls) == 2:
                self._lock.acquire()
                with open(self._file_path, "ab") as f:
                    f.write(text[: len(text) // 2].encode()); f.flush(); os.fsync(f.fileno())
                die()
        return real(self, logs)
    JournalFileBackend.append_logs = append_logs
elif fault == "mlflow":  # dies while logging the second epoch's metrics of the first trial
    from mlflow.tracking import MlflowClient
    real = MlflowClient.log_batch
    def log_batch(self, run_id, metrics=(), *a, **k):
        if any(m.step == 2 and m.key == "train_error" for m in metrics or ()):
            die()
        return real(self, run_id, metrics, *a, **k)
    MlflowClient.log_batch = log_batch
elif fault == "fill":  # the disk fills up when the first checkpoint is written
    import torch
    real, filler = torch.save, os.environ["FILLER"]
    def save(obj, f, *a, **k):
        if hasattr(f, "write") and ".tmp" in getattr(f, "name", "") and not os.path.exists(filler):
            with open(filler, "wb") as g:
                try:
                    while True:
                        g.write(b"\0" * 65536); g.flush()
                except OSError:
                    pass
        return real(obj, f, *a, **k)
    torch.save = save
from runners.cli import main
sys.exit(main(args))
"""


def _inject(fault: str, *args, env=None):
    proc = Forked(INJECT, fault, *args, env=env)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_complete_once(results: Path, tracking: str | None = None):
    """Every cell COMPLETE exactly once in Optuna and FINISHED exactly once in MLflow (results/
    mlflow.db, or the store at `tracking`); no run RUNNING; no temporary checkpoint file left."""
    storage = JournalStorage(JournalFileBackend(str(results / "optuna" / "smoke.journal")))
    trials = optuna.load_study(study_name="smoke", storage=storage).get_trials()
    complete = Counter(t.user_attrs["cell"] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == Counter({c: 1 for c in CELLS}), [(t.number, t.state, t.user_attrs) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    c = MlflowClient(tracking or f"sqlite:///{results / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("smoke").experiment_id], max_results=1000)
    assert "RUNNING" not in {r.info.status for r in runs}, [(r.info.run_name, r.info.status) for r in runs]
    finished = Counter(f"{r.data.tags['variant']}/seed={r.data.tags['seed']}" for r in runs
                       if r.info.status == "FINISHED" and r.data.tags["stage"] != "study")
    by_id = {t.user_attrs["mlflow_run_id"] for t in trials if t.state == TrialState.COMPLETE}
    assert by_id <= {r.info.run_id for r in runs if r.info.status == "FINISHED"}
    assert finished == Counter({c: 1 for c in CELLS}), finished
    assert [r.info.status for r in runs if r.data.tags["stage"] == "study"] == ["FINISHED"]
    assert not list(results.rglob("*.tmp"))
    return trials, runs


@pytest.mark.parametrize("fault", ["journal", "mlflow"])
@pytest.mark.usefixtures("seeded_store")
def test_kill_9_mid_write_then_one_rerun_completes_the_study(results, fault):
    killed = _inject(fault, "run", SMOKE, *SMALL)
    assert killed.returncode == -9, killed.stderr[-2000:]
    out = ablate("run", SMOKE, *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    _assert_complete_once(results)
    if fault == "journal":
        assert list((results / "optuna").glob("smoke.journal.torn-*")), "no backup of the torn journal"
        assert "cut short" in out.stderr


@pytest.mark.usefixtures("seeded_store")
def test_a_full_disk_then_one_rerun_completes_the_study(results, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        env = {"ABLATE_RESULTS": str(disk / "results"), "FILLER": str(disk / "filler")}
        full = _inject("fill", "run", SMOKE, *SMALL, env=env)
        assert full.returncode != 0
        assert "Traceback" not in full.stderr or "No space left" in full.stderr
        assert not list((disk / "results").rglob("*.tmp")), "a failed checkpoint write left its temp file"
        (disk / "filler").unlink()
        out = ablate("run", SMOKE, *SMALL, env={"ABLATE_RESULTS": str(disk / "results")})
        assert out.returncode == 0, out.stderr[-3000:]
        _assert_complete_once(disk / "results")
    finally:
        subprocess.run(["umount", "-l", str(disk)])


@pytest.mark.usefixtures("seeded_store")
def test_a_torn_journal_is_repaired_and_garbage_is_refused(results):
    assert ablate("run", SMOKE, *SMALL).returncode == 0
    journal = results / "optuna" / "smoke.journal"
    whole = journal.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    journal.write_bytes(whole + last[: len(last) // 2])  # an append cut short
    status = ablate("status", SMOKE, *SMALL, "--json")
    assert status.returncode == 0 and "cut short" in status.stderr, status.stderr
    assert [r["complete"] for r in __import__("json").loads(status.stdout)] == [2]
    assert journal.read_bytes() == whole
    out = ablate("run", SMOKE, *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    _assert_complete_once(results)

    journal.write_bytes(whole + b"garbage\n")
    bad = ablate("run", SMOKE, *SMALL)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "smoke.journal" in bad.stderr and "record" in bad.stderr and "Traceback" not in bad.stderr
    journal.write_bytes(whole)
    _assert_complete_once(results)


@pytest.mark.usefixtures("seeded_store")
def test_a_deleted_mlflow_store_between_a_kill_and_the_rerun(results):
    killed = _inject("mlflow", "run", SMOKE, *SMALL)
    assert killed.returncode == -9
    (results / "mlflow.db").unlink()
    out = ablate("run", SMOKE, *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "creating a new one" in out.stderr
    storage = JournalStorage(JournalFileBackend(str(results / "optuna" / "smoke.journal")))
    trials = optuna.load_study(study_name="smoke", storage=storage).get_trials()
    assert Counter(t.user_attrs["cell"] for t in trials if t.state == TrialState.COMPLETE) == Counter(
        {c: 1 for c in CELLS})
    c = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("smoke").experiment_id], max_results=1000)
    assert "RUNNING" not in {r.info.status for r in runs}
    assert len([r for r in runs if r.data.tags["stage"] == "study"]) == 1


@pytest.mark.usefixtures("seeded_store")
def test_kill_9_mid_checkpoint_write_then_a_corrupt_checkpoint(results):
    """The kill leaves a half-written temp file beside the last good checkpoint; that checkpoint
    is then cut to 10 bytes: the rerun sets it aside (kept, named) and restarts the cell."""
    killed = _inject("checkpoint", "run", SMOKE, *SMALL)
    assert killed.returncode == -9
    assert list(results.rglob(".checkpoint.pt.*.tmp"))
    ckpt = next(results.rglob("checkpoint.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:10])
    out = ablate("run", SMOKE, *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cannot be read" in out.stderr and "kept as" in out.stderr and "--fresh" not in out.stderr
    kept = list(results.rglob("checkpoint.pt.unreadable-*"))
    assert len(kept) == 1 and kept[0].stat().st_size == 10 and kept[0].name in out.stderr
    _assert_complete_once(results)


@pytest.mark.usefixtures("seeded_store")
def test_a_paused_worker_whose_trial_was_retried_writes_nothing_more_for_it(results, monkeypatch):
    """A worker paused past its heartbeat grace (SIGSTOP, a VM pause) finds, when it wakes, that
    another worker failed its trial, closed its MLflow run KILLED and enqueued the retry. The
    takeover is played here at the moment the worker wakes (its first write after epoch 1): it
    must then write no checkpoint, no metric and no run state for that trial, say so in one line
    and go on; the retry trains the cell once."""
    from runners.study import optuna_private as private, parent, runner as runner_mod, trial as trial_mod
    seen, real_fit, real_run = {}, trial_mod._fit, trial_mod.run_trial

    def run_trial(layout, worker, study, trial):
        seen.update(layout=layout, worker=worker, study=study)
        ok = real_run(layout, worker, study, trial)
        if seen.get("number") == trial.number:  # the paused attempt is over: what did it leave?
            seen["left"] = (Path(seen["checkpoint"], "checkpoint.pt").exists(),
                            worker.mlflow.get_run(seen["run"]).info.status,
                            worker.mlflow.get_metric_history(seen["run"], "train_error"))
        return ok

    def fit(spec, attrs, worker, trial, tracker, title="", resumed=False, guard=None):
        def wake():
            if "number" not in seen:  # the other worker's move, while this one was stopped
                failed = private.fail(seen["study"], private.trial_id(trial))
                parent.supersede(worker.mlflow, failed.user_attrs["mlflow_run_id"])
                seen["layout"].requeue(seen["study"], failed)
                seen.update(number=trial.number, run=tracker.run_id, checkpoint=attrs["checkpoint"])
            guard()
        return real_fit(spec, attrs, worker, trial, tracker, title, resumed, guard=wake)

    monkeypatch.setattr(runner_mod, "run_trial", run_trial)
    monkeypatch.setattr(trial_mod, "_fit", fit)
    out = ablate("run", SMOKE, *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "UpdateFinishedTrialError" not in out.stderr
    assert [line for line in out.stderr.splitlines() if "given to another worker" in line], out.stderr
    assert seen["left"] == (False, "KILLED", []), seen["left"]
    trials, runs = _assert_complete_once(results)
    assert {r.info.run_id: r.info.status for r in runs}[seen["run"]] == "KILLED"


@pytest.mark.usefixtures("seeded_store")
def test_a_copied_results_folder_resumes_from_its_own_checkpoints(results, tmp_path):
    """Checkpoint folders are recorded relative to the checkpoint root: a results/ copied
    elsewhere (and the original deleted) resumes the interrupted cell from the copy's checkpoint."""
    import shutil
    killed = _inject("mlflow", "run", SMOKE, *SMALL)
    assert killed.returncode == -9
    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    shutil.rmtree(results)
    out = ablate("run", SMOKE, *SMALL, env={"ABLATE_RESULTS": str(copy)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1 interrupted, resuming first" in out.stdout + out.stderr, out.stdout + out.stderr
    trials = _assert_complete_once(copy)[0]
    assert any(t.user_attrs.get("resumed") for t in trials if t.state == TrialState.COMPLETE)
    assert not (results / "checkpoints").exists()


@pytest.mark.usefixtures("seeded_store")
def test_starting_over_with_a_changed_spec_sets_a_leftover_checkpoint_aside(results):
    """The journal moved aside (as the advice for a damaged journal says) and the spec changed:
    the old attempt's checkpoint in the cell's folder is another run's. It is kept aside with a
    warning and the cell trains from scratch (no attempt fails on it); the old study's parent
    run, left RUNNING by the kill, is closed."""
    killed = _inject("mlflow", "run", SMOKE, *SMALL)
    assert killed.returncode == -9
    journal = results / "optuna" / "smoke.journal"
    journal.rename(journal.with_name("smoke.journal.old"))
    out = ablate("run", SMOKE, *SMALL, "--set", "train.lr=0.05")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "is of another run (train.lr: 0.1 there, 0.05 here)" in out.stderr, out.stderr
    assert "--fresh" not in out.stderr and "failed" not in out.stderr
    assert list(results.rglob("checkpoint.pt.other-run-*"))
    c = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("smoke").experiment_id], max_results=1000)
    assert "RUNNING" not in {r.info.status for r in runs}, [(r.info.run_name, r.info.status) for r in runs]
    assert sorted(r.info.status for r in runs if r.data.tags["stage"] == "study") == ["FINISHED", "KILLED"]


@pytest.mark.usefixtures("seeded_store")
def test_an_mlflow_store_deleted_mid_run_stops_in_one_line_and_uses_no_attempt(results, monkeypatch):
    """`mlflow.db` deleted while a trial trains: the worker stops at its next write with one line
    (no traceback, no trial failed, no attempt used, no empty store made); the rerun makes a new
    store and completes the study, every cell on its first attempt."""
    from runners.study import trial as trial_mod
    real_fit = trial_mod._fit

    def fit(spec, attrs, worker, trial, tracker, title="", resumed=False, guard=None):
        def delete_then_guard():
            (results / "mlflow.db").unlink(missing_ok=True)
            guard()
        return real_fit(spec, attrs, worker, trial, tracker, title, resumed, guard=delete_then_guard)

    monkeypatch.setattr(trial_mod, "_fit", fit)
    out = ablate("run", SMOKE, *SMALL)
    monkeypatch.setattr(trial_mod, "_fit", real_fit)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and "mlflow.db was deleted while the study ran" in lines[-1], out.stderr
    assert "failed" not in out.stderr, out.stderr
    assert not (results / "mlflow.db").exists()
    storage = JournalStorage(JournalFileBackend(str(results / "optuna" / "smoke.journal")))
    trials = optuna.load_study(study_name="smoke", storage=storage).get_trials()
    assert not [t for t in trials if "error" in t.user_attrs]
    again = ablate("run", SMOKE, *SMALL)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = optuna.load_study(study_name="smoke", storage=storage).get_trials()
    assert Counter(t.user_attrs["cell"] for t in trials if t.state == TrialState.COMPLETE) == Counter(
        {c: 1 for c in CELLS})
    assert {t.user_attrs["attempt"] for t in trials} == {1}


def test_processes_creating_one_new_mlflow_store_at_once_all_succeed(tmp_path):
    """Two `ablate run` started together on an empty results/ both create MLflow's schema; MLflow
    does not do that safely twice at once. Under the schema lock one creates it and the others
    wait, then find it: all succeed and the store has its tables."""
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    code = ("import sys\nfrom runners.tracking.store import client\n"
            "print(client(sys.argv[1]).search_experiments()[0].name)\n")
    procs = [Forked(code, uri) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-1500:] for _, err in outs]
    assert all(out.strip() == "Default" for out, _ in outs), outs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def _tracking_server(db: Path, port: int):
    """`mlflow server` on 127.0.0.1:`port` over the SQLite store `db` (its log beside it), in a
    process group of its own, killed with SIGKILL (uvicorn and all) at the latest on the way out.
    MLflow's job runner is off: it is three more processes the study never uses."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(db.with_suffix(".log"), "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                                 "--artifacts-destination", str(db.parent / "artifacts"), "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1"],
                                env=env, start_new_session=True, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while not _answers(port):
            assert proc.poll() is None and time.monotonic() < deadline, db.with_suffix(".log").read_text()[-3000:]
            time.sleep(0.2)
        yield proc
    finally:
        _kill_server(proc)


def _kill_server(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_tracking_server_killed_mid_run_stops_in_one_redacted_line_and_uses_no_attempt(
        results, tmp_path, monkeypatch, _empty_mlflow_store):
    """`--tracking-uri http://user:SECRET@...`: the `mlflow server` is killed (SIGKILL, the whole
    process group) while the first trial trains. The run stops at its next MLflow write in one
    line naming the server, its password masked (exit 2, no traceback, no trial failed, no
    attempt used); with the server restarted on the same store, the rerun finishes every cell
    once, and the stopped attempt's run is closed, not left RUNNING."""
    from runners.study import trial as trial_mod
    db = tmp_path / "server" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(_empty_mlflow_store, db)  # its tables made: the server starts seconds sooner
    port = _free_port()
    uri = f"http://lab:SECRET@127.0.0.1:{port}"
    real_fit = trial_mod._fit
    with _tracking_server(db, port) as server:
        def fit(spec, attrs, worker, trial, tracker, title="", resumed=False, guard=None):
            def kill_then_guard():  # after the first epoch, before its metrics are logged
                _kill_server(server)
                guard()
            return real_fit(spec, attrs, worker, trial, tracker, title, resumed, guard=kill_then_guard)

        monkeypatch.setattr(trial_mod, "_fit", fit)
        out = ablate("run", SMOKE, *SMALL, "--tracking-uri", uri)
        monkeypatch.setattr(trial_mod, "_fit", real_fit)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"the MLflow tracking server at http://lab:***@127.0.0.1:{port} stopped answering" in lines[0], lines
    assert "rerun the same command" in lines[0], lines
    assert "SECRET" not in out.stdout + out.stderr
    storage = JournalStorage(JournalFileBackend(str(results / "optuna" / "smoke.journal")))
    trials = optuna.load_study(study_name="smoke", storage=storage).get_trials()
    assert not [t for t in trials if "error" in t.user_attrs or t.state == TrialState.RUNNING], trials

    with _tracking_server(db, port):
        again = ablate("run", SMOKE, *SMALL, "--tracking-uri", uri)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "SECRET" not in again.stdout + again.stderr
        trials, runs = _assert_complete_once(results, f"http://127.0.0.1:{port}")
    assert {t.user_attrs["attempt"] for t in trials} == {1}
    stopped = [r for r in runs if r.data.tags["stage"] != "study" and r.info.status != "FINISHED"]
    assert [r.info.status for r in stopped] == ["KILLED"], [(r.info.run_name, r.info.status) for r in runs]
