"""Where a study stands, as it runs: `[k/N]` cells, elapsed time, an ETA, and the running trial's epochs.

The library never prints: the command hands a `StudyProgress` a stream (or anything with
`write`), and the runner reports trial starts, epochs and ends to it. On a terminal the
running trial is a bar redrawn in place; elsewhere (a log file, CI) every epoch is a plain line.
The ETA weighs the cells left by their cost (MACs per image x images seen: a ResNet-20 cell costs
3.3 times a plain-8 one) at the rate this process measured on its finished trials
(seconds per unit of cost), divided by the workers sharing them; it is shown once one trial has
finished. Without costs (a caller that gives none) it is the mean trial time times the cells left.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, TextIO

from optuna.trial import TrialState

_log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """12 s, 3m 05s, 2h 07m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


class StudyProgress:
    """Progress lines for one process's share of a study, written to `stream`; warnings (a failed
    trial, a restarted process group) to `errors`, each as one line starting with `prefix`."""

    def __init__(self, stream: TextIO, total: int, *, done: int = 0, workers: int = 1,
                 tty: bool | None = None, clock: Callable[[], float] = time.monotonic, width: int = 24,
                 errors: TextIO | None = None, prefix: str = "ablate") -> None:
        self.stream, self.total, self.done, self.workers = stream, total, done, max(1, workers)
        self.errors, self.prefix = errors, prefix
        self.tty = bool(getattr(stream, "isatty", lambda: False)()) if tty is None else tty
        self.clock, self.width = clock, width
        self.started = clock()
        self.trial_started = self.started
        self.durations: list[float] = []
        self.costs: list[float | None] = []  # of the finished trials, as `start` was told
        self.left_cost: float | None = None  # of the cells not finished, all workers (`set_done`)
        self.name, self.epochs, self.cost, self._bar_open = "", 0, None, False

    # -- what the runner reports ------------------------------------------------------------------
    def set_done(self, done: int, total: int | None = None, left_cost: float | None = None) -> None:
        """The study's count of finished cells (all workers), read from the storage, and the cost
        of the cells left (`cell_counts`)."""
        self.done, self.left_cost = done, left_cost
        if total is not None:
            self.total = total

    def start(self, name: str, epochs: int, resumed: bool = False, cost: float | None = None) -> None:
        """A trial started; `cost` in the units of `set_done`'s (MACs x images, estimate.cell_cost)."""
        self.name, self.epochs, self.cost, self.trial_started = name, epochs, cost, self.clock()
        self._line(f"{self._count(self.done + 1)} {name}: started" + (" (resuming)" if resumed else "")
                   + self._eta())

    def epoch(self, epoch: int, metrics: dict) -> None:
        errors = "  ".join(f"{k} {metrics[k]:.4f}" for k in ("train_error", "test_error") if k in metrics)
        took = duration(self.clock() - self.trial_started)
        if self.tty:
            filled = round(self.width * epoch / max(self.epochs, 1))
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r  [{bar}] epoch {epoch}/{self.epochs}  {errors}  {took}\x1b[K")
            self.stream.flush()
            self._bar_open = True
        else:
            self._line(f"  epoch {epoch}/{self.epochs}  {errors}  {took}")

    def finish(self, outcome: str, errors: dict | None = None) -> None:
        """A trial ended: `outcome` is done, diverged, pruned or failed."""
        took = self.clock() - self.trial_started
        self.durations.append(took)
        self.costs.append(self.cost)
        self.done += 1
        if self.left_cost is not None and self.cost is not None:
            self.left_cost = max(self.left_cost - self.cost, 0.0)
        text = "  ".join(f"{k} {v:.4f}" for k, v in (errors or {}).items() if v is not None)
        self._line(f"{self._count(self.done)} {self.name}: {outcome} in {duration(took)}"
                   + (f"  {text}" if text else "") + self._eta())

    def note(self, text: str) -> None:
        """A line of its own (what the study is, what was found on a rerun)."""
        self._line(text)

    def end_line(self) -> None:
        """End an epoch bar's line (a terminal), so the next output starts a line of its own."""
        if self._bar_open:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_open = False

    def warn(self, text: str) -> None:
        """A line on the error stream, named for the command."""
        if self._bar_open:
            self.stream.write("\r\x1b[K")
            self._bar_open = False
        target = self.errors or self.stream
        target.write(f"{self.prefix}: {text}\n")
        target.flush()

    def close(self) -> str:
        """The total line (also returned)."""
        line = (f"{self.done}/{self.total} cells done; this process ran {len(self.durations)} trial(s) "
                f"in {duration(self.clock() - self.started)}")
        self._line(line)
        return line

    # -- formatting -------------------------------------------------------------------------------
    def _count(self, k: int) -> str:
        width = len(str(self.total))
        return f"[{min(k, self.total):>{width}}/{self.total}]"

    def _eta(self) -> str:
        elapsed = f"  elapsed {duration(self.clock() - self.started)}"
        if not self.durations:
            return elapsed
        left = max(self.total - self.done, 0)
        timed = [(t, c) for t, c in zip(self.durations, self.costs) if c]
        if self.left_cost is not None and timed and len(timed) == len(self.durations):
            seconds = self.left_cost * sum(t for t, _ in timed) / sum(c for _, c in timed)
        else:
            seconds = sum(self.durations) / len(self.durations) * left
        return elapsed + f", ETA {duration(seconds / self.workers)}"

    def _line(self, text: str) -> None:
        if self._bar_open:  # end the bar's line before a plain one
            self.stream.write("\r\x1b[K")
            self._bar_open = False
        self.stream.write(text + "\n")
        self.stream.flush()


class NoProgress(StudyProgress):
    """What a runner reports to when no command gave it a stream: nothing, but warnings are logged."""

    def __init__(self) -> None:
        super().__init__(_Discard(), 0)

    def warn(self, text: str) -> None:
        _log.warning("%s", text)


class _Discard:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def cell_counts(spec, studies, costs: dict | None = None) -> tuple[int, int, float | None]:
    """(finished, planned) trials of a study across all workers: every grid cell, plus the search
    trials; an attempt interrupted and retried counts once, through its retry. Third, given
    `costs` ({(stage, variant key): cost of one of its cells}), the cost of the cells left."""
    planned = len(spec.variants) * len(spec.seeds)
    if spec.search:
        planned += len(spec.variants) * spec.search.trials_per_variant
    left = None
    if costs is not None:
        per = {"confirm": len(spec.seeds), "search": spec.search.trials_per_variant if spec.search else 0}
        left = sum(cost * per[stage] for (stage, _), cost in costs.items())
    done = 0
    for study in studies:
        for t in study.get_trials(deepcopy=False):
            ended = t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                t.state == TrialState.FAIL and "error" in t.user_attrs)  # failed, not interrupted
            if ended:
                done += 1
                if left is not None:
                    left -= costs.get((t.user_attrs.get("stage"), t.user_attrs.get("variant")), 0.0)
    return done, planned, None if left is None else max(left, 0.0)
