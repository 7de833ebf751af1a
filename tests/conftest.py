import contextlib
import fcntl
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Tests run two at a time (pytest -n 2): each, and every process it starts, takes one thread,
    # since two processes with two threads each on two cores run many times slower than one.
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    """The slow tier first (each of its tests takes seconds to a minute; the longest first, by
    their timeouts), the many quick tests after: two workers then finish together instead of one
    running a long test alone at the end. The order within each tier is kept."""
    def rank(item):
        slow = item.get_closest_marker("slow") is not None
        limit = item.get_closest_marker("timeout")
        return (not slow, -(limit.args[0] if slow and limit and limit.args else 0))
    items.sort(key=rank)


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
    results.mkdir(parents=True, exist_ok=True)
    shutil.copy(_empty_mlflow_store, results / "mlflow.db")
    return results


# -- the CLI, in this process or in a new one ---------------------------------------------------------
def ablate_process(*args, timeout=300, **popen) -> subprocess.CompletedProcess:
    """Run the `ablate` CLI in a new process from the repository root: only where the process
    boundary is what is tested (signals, kills, startup imports); else `ablate`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **popen.pop("env", {})}
    return subprocess.run([sys.executable, "-m", "runners.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, **popen)


def _clear_mlflow_caches() -> None:
    """MLflow keeps one store (an SQLAlchemy engine) per URI for the life of the process: a
    command started afresh, as a new process would be, builds its own."""
    if "mlflow" not in sys.modules:
        return
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils
    tracking_utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()
    registry = getattr(registry_utils, "_model_registry_store_registry", None)
    if registry is not None:
        registry._get_store_with_resolved_uri.cache_clear()
    # ... and one SQLAlchemy engine per database URI, whose pooled connections outlive a deleted
    # SQLite file (a new process opens the new file).
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    engines = getattr(SqlAlchemyStore, "_engine_map", None)
    if engines is not None:
        with SqlAlchemyStore._engine_map_lock:
            engines.clear()


@contextlib.contextmanager
def process_state():
    """What a command changes in its process, restored afterwards: the environment (ABLATE_RESULTS,
    MLFLOW_TRACKING_URI, CUBLAS_WORKSPACE_CONFIG, ABLATE_GROUP_STATUS, ...), the working
    directory, torch's threads and determinism settings, the SIGTERM/SIGINT handlers, the levels
    of the loggers that existed before (runners.tracking.store.quiet_mlflow sets some), MLflow's
    per-URI store cache and dynamo's compile cache."""
    import torch
    env, cwd = dict(os.environ), os.getcwd()
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    det_warn, bench = torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark
    fill = getattr(torch.utils, "deterministic", None)
    fill = fill and getattr(fill, "fill_uninitialized_memory", None)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    loggers = logging.Logger.manager.loggerDict
    levels = {name: lg.level for name, lg in loggers.items() if isinstance(lg, logging.Logger)}
    root_level = logging.getLogger().level
    _clear_mlflow_caches()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        torch.backends.cudnn.benchmark = bench
        if fill is not None:
            torch.utils.deterministic.fill_uninitialized_memory = fill
        for s, h in handlers.items():
            signal.signal(s, h)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        logging.getLogger().setLevel(root_level)
        if "torch._dynamo" in sys.modules:
            torch._dynamo.reset()
        _clear_mlflow_caches()


@contextlib.contextmanager
def _captured():
    """sys.stdout/sys.stderr into strings, and file descriptors 1 and 2 (the processes a command
    starts: workers, torchrun) into files; warnings logged to stderr as a process without logging
    configuration shows them (logging.lastResort: WARNING and above, the message alone)."""
    out, err = io.StringIO(), io.StringIO()
    files = [tempfile.TemporaryFile(mode="w+b") for _ in (1, 2)]
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        for fd, f in zip((1, 2), files):
            os.dup2(f.fileno(), fd)
        root.addHandler(handler)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err, files
    finally:
        root.removeHandler(handler)
        for fd, s in zip((1, 2), saved):
            os.dup2(s, fd)
            os.close(s)


def ablate(*args, timeout=None, env=None) -> subprocess.CompletedProcess:
    """Run the `ablate` CLI in this process (runners.cli.main) from the repository root with `env`
    added to the environment: the interface of `ablate_process` (returncode, stdout, stderr; an
    uncaught exception is exit status 1 with its traceback on stderr) at none of a new process's
    start-up cost. The process state a command changes is restored afterwards (process_state).
    `timeout` is pytest-timeout's job here."""
    from runners import cli
    argv = [str(a) for a in args]
    with process_state():
        os.environ.update(env or {})
        os.chdir(REPO)
        with _captured() as (out, err, files):
            try:
                code = cli.main(argv)
            except SystemExit as e:  # argparse: --help, usage errors; as Python's exit would report it
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                if not isinstance(e.code, (int, type(None))):
                    print(e.code, file=sys.stderr)
            except Exception:  # noqa: BLE001 - as a process would: a traceback and status 1
                traceback.print_exc(file=sys.stderr)
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
        children = []
        for f in files:
            f.seek(0)
            children.append(f.read().decode(errors="replace"))
            f.close()
    return subprocess.CompletedProcess(["ablate", *argv], code, out.getvalue() + children[0],
                                       err.getvalue() + children[1])


class Forked:
    """A new process forked from this one, running `code` as `python -c code *argv` would from the
    repository root with `env` added, but without a new interpreter's imports (torch, Optuna and
    MLflow, 5-10 s a process on a busy CPU). For what only a separate process shows: signals, kill
    -9, several workers. The interface of the subprocess.Popen it replaces: pid, poll, wait,
    send_signal, kill, communicate (stdout and stderr as text), returncode (-N: killed by signal N).
    The child starts as a new process would: default signal handlers, no logging handlers (warnings
    reach stderr through logging.lastResort), torch at OMP_NUM_THREADS threads, MLflow's per-URI
    stores not shared (cleared before the fork), stdout and stderr line-buffered into files."""

    def __init__(self, code: str, *argv, env=None):
        self.args = [str(a) for a in argv]
        self.returncode = None
        self._files = [tempfile.TemporaryFile(mode="w+b") for _ in (1, 2)]
        _clear_mlflow_caches()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code_ = 1
            try:
                code_ = self._child(code, env)
            finally:
                os._exit(code_)

    def _child(self, code: str, env) -> int:
        import torch
        for fd, f in zip((1, 2), self._files):
            os.dup2(f.fileno(), fd)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        logging.getLogger().handlers.clear()
        os.environ.update(env or {})
        os.chdir(REPO)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
        sys.argv = ["-c", *self.args]
        try:
            exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - as the interpreter would: a traceback and status 1
            traceback.print_exc()
            status = 1
        sys.stdout.flush()
        sys.stderr.flush()
        return status

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout=None) -> tuple[str, str]:
        self.wait(timeout)
        out = []
        for f in self._files:
            f.seek(0)
            out.append(f.read().decode(errors="replace"))
        return out[0], out[1]


# `python -m runners.cli`, as forked code
CLI = "import sys\nfrom runners.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def ablate_forked(*args, env=None) -> Forked:
    """`ablate *args` started in a forked process (Forked): a kill, a signal, several workers."""
    return Forked(CLI, *args, env=env)


def assert_one_line_error(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    for f in fragments:
        assert f in out.stderr, (f, out.stderr)


# -- trained stores, built once per session ------------------------------------------------------------
@contextlib.contextmanager
def once(tmp_path_factory, worker_id: str, name: str):
    """A folder that one process of the session fills: yields (folder, True) to the first to get
    there (under a file lock shared by the xdist workers; pytest-xdist's recipe) and (folder,
    False) to the others, which wait for it. The filler writes `done` last."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # pytest-xdist: the workers' base folders share their parent
        shared = shared.parent
    folder = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            build = not (folder / "done").exists()
            if build:  # afresh, should an earlier try have failed half-way
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
            yield folder, build
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory, worker_id, _empty_mlflow_store) -> Path:
    """The smoke study (ablations/smoke.yaml as shipped: 2 variants x 2 seeds), run once per
    session by `ablate run` into <folder>/results; <folder>/run.json holds that command's
    returncode, stdout and stderr. Read it, or copy it (`smoke_results`) to change it."""
    with once(tmp_path_factory, worker_id, "smoke-study") as (folder, build):
        if build:
            (folder / "results").mkdir()
            shutil.copy(_empty_mlflow_store, folder / "results" / "mlflow.db")
            out = ablate("run", REPO / "ablations" / "smoke.yaml",
                         env={"ABLATE_RESULTS": str(folder / "results"), "MLFLOW_TRACKING_URI": ""})
            (folder / "run.json").write_text(json.dumps(
                {"returncode": out.returncode, "stdout": out.stdout, "stderr": out.stderr}))
            (folder / "done").touch()
    return folder


def recorded_run(folder: Path) -> subprocess.CompletedProcess:
    """The command that built a session store (`smoke_study`), as `ablate` returned it."""
    r = json.loads((folder / "run.json").read_text())
    return subprocess.CompletedProcess(["ablate", "run"], r["returncode"], r["stdout"], r["stderr"])


@pytest.fixture
def smoke_results(smoke_study, results) -> Path:
    """This test's own copy of the session's smoke study as its results/ (see `results`). MLflow
    keeps absolute artifact paths: the copy's artifacts stay in the session's folder."""
    shutil.copytree(smoke_study / "results", results)
    return results


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
