"""MLflow's UI as a person sees it: `mlflow ui` on a store, and headless Chromium on a link.

Used by `ablate figures --mlflow-screenshot` (a picture of the comparison view beside the
figures) and by the browser test. Chromium is Debian's `chromium` package, driven through its
command line (`--dump-dom`, `--screenshot`, `--virtual-time-budget` to let the page's scripts
settle): no browser-automation dependency.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ConfigError
from .view import BAR_TITLE, CHART_METRICS, SECTION_TITLE

CHROMIUMS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUMS) if p), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_ui(tracking_uri: str, port: int | None = None, timeout: float = 180.0) -> Iterator[str]:
    """`mlflow ui` on `tracking_uri` for the duration; yields its base URL (http://127.0.0.1:PORT)."""
    with ui_process(tracking_uri, port, timeout) as (url, _):
        yield url


@contextlib.contextmanager
def ui_process(tracking_uri: str, port: int | None = None,
               timeout: float = 180.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """`serve_ui`, yielding the server's process too (to wait on it); however the block ends
    (Ctrl-C, SIGTERM raised as `Terminated`), the server's process group is stopped and reaped."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: the server's workers stop with it
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ConfigError(f"mlflow ui exited with status {proc.returncode}: "
                                  f"{(proc.stderr.read() or '').strip().splitlines()[-1:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"mlflow ui did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.5)
        yield url, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise ConfigError("no Chromium found (chromium, chromium-browser or google-chrome on PATH); "
                          "install it with `apt-get install -y chromium`")
    # --no-sandbox: Chromium refuses to start its sandbox as root (CI and these machines run as root).
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--hide-scrollbars", "--no-first-run"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=timeout)


def render_dom(url: str, *, size: tuple[int, int] = (2400, 1400), wait_ms: int = 20000,
               timeout: float = 180.0) -> str:
    """The page's DOM after its scripts ran for `wait_ms` of (virtual) time."""
    out = _chromium([f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={wait_ms}",
                     "--dump-dom", url], timeout)
    if out.returncode != 0:
        raise ConfigError(f"chromium failed on {url}: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout


def settled_dom(url: str, ready: Callable[[str], bool], *, waits=(20000, 40000, 80000), **kw) -> tuple[str, int]:
    """The DOM once `ready(dom)` holds, loading again with a longer wait while it does not (the
    UI fetches runs, then each chart's history: a busy server takes a while); returns the DOM and
    the wait that sufficed (the last one's DOM when none did)."""
    for wait in waits:
        dom = render_dom(url, wait_ms=wait, **kw)
        if ready(dom):
            break
    return dom, wait


def charts_loaded(dom: str) -> bool:
    """The comparison's bar charts and first curve are drawn, legend and all (not a loading placeholder)."""
    return (BAR_TITLE in dom and 'class="trace bars"' in dom[dom.index(BAR_TITLE):]
            and SECTION_TITLE in dom and f"({CHART_METRICS[0]})" in dom[dom.index(SECTION_TITLE):])


def run_page_loaded(dom: str) -> bool:
    """A run's page is drawn (its tabs, in either layout)."""
    return "Model metrics" in dom


def genai_layout(dom: str) -> bool:
    """MLflow 3's GenAI layout, whose side bar lists evaluation runs and judges (the model-training
    layout lists runs, models and traces)."""
    return "Evaluation runs" in dom or "Judges" in dom


def screenshot(url: str, path: Path, *, size: tuple[int, int] = (2200, 1300), wait_ms: int = 20000,
               timeout: float = 180.0) -> Path:
    """A PNG of the page after its scripts ran for `wait_ms` of (virtual) time."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    out = _chromium([f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={wait_ms}",
                     f"--screenshot={path}", url], timeout)
    if out.returncode != 0 or not path.exists():
        raise ConfigError(f"chromium could not screenshot {url}: {out.stderr.strip().splitlines()[-1:]}")
    return path
