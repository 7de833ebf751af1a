"""`ablate doctor`'s shared state: the rows (`Check`), the options, and the `Doctor` every check
reads (device, data, budget) and adds its row to. The checks are grouped by concern in the
modules beside this one; runners/doctor/run.py runs them in order."""
from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass, field

from models.spec import ArchSpec

from ..train.config import DataConfig, TrainConfig
from ..train.data import load_dataset

TINY = ArchSpec(depth=8)  # 3 stages of one basic block: trains in seconds on a CPU


@dataclass
class Check:
    section: str
    name: str
    status: str  # ok | fail | skip | info
    value: str  # one short line for the table
    details: dict = field(default_factory=dict)


@dataclass
class Options:
    device: str = "auto"
    quick: bool = False
    data: str | None = None  # an ImageFolder root (train/, test/), else synthetic
    budget_s: float = 420.0  # no measurement starts that would end after this (the run must fit 8 min)
    only: tuple[str, ...] | None = None  # check groups to run (runners/doctor/run.py GROUPS); None: all


class Doctor:
    """The options, the device and data the checks share, and the rows so far."""

    def __init__(self, opts: Options, on_check=None) -> None:
        self.opts, self.checks, self.start = opts, [], time.perf_counter()
        self.longest = 0.0  # the longest measurement so far: what the next one is assumed to take
        self.recommendation: dict = {}
        self.on_check = on_check  # called with the report so far after each check (partial results)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def add(self, section, name, status, value, **details) -> Check:
        c = Check(section, name, status, value, details)
        self.checks.append(c)
        return c

    def guarded(self, section: str, name: str, fn, *, measurement: bool = True):
        """Run one check; an exception becomes a fail row, a spent budget a skip row. A measurement
        starts only if one as long as the longest so far still ends within the budget: checking
        the budget only before each start let `--quick` run 89 s past it."""
        left = self.opts.budget_s - self.elapsed()
        if measurement and left < self.longest:
            return self.add(section, name, "skip", f"time budget ({self.opts.budget_s:.0f} s): {max(left, 0):.0f} s "
                            f"left, a measurement has taken up to {self.longest:.0f} s")
        t = time.perf_counter()
        try:
            check = fn()
        except Exception as e:  # noqa: BLE001 - one failing check must not hide the others
            first = (str(e).strip().splitlines() or [""])[0][:160]
            check = self.add(section, name, "fail", f"{type(e).__name__}: {first}",
                             traceback=traceback.format_exc(limit=6))
        took = time.perf_counter() - t
        if measurement:
            self.longest = max(self.longest, took)
        if check is not None:
            check.details["seconds"] = round(took, 2)
        if self.on_check is not None:
            self.on_check(self.report())
        return check

    def report(self) -> dict:
        statuses = [c.status for c in self.checks]
        return {"device": str(getattr(self, "device", self.opts.device)), "quick": self.opts.quick,
                "only": list(self.opts.only) if self.opts.only else None,
                "data": self.opts.data, "seconds": round(self.elapsed(), 1),
                "ok": "fail" not in statuses, "counts": {s: statuses.count(s) for s in ("ok", "fail", "skip", "info")},
                "recommendation": self.recommendation, "checks": [dataclasses.asdict(c) for c in self.checks]}

    # -- what the checks share --
    def load_data(self) -> Check:
        quick, cpu = self.opts.quick, self.device.type == "cpu"
        name = self.opts.data or "synthetic"
        t = time.perf_counter()
        if self.opts.data is None:
            full = DataConfig("synthetic", val_size=0, subset=2_000 if quick else 10_000)
        else:
            full = DataConfig(name, val_size=0)
        self.data = load_dataset(full, self.device)  # the throughput sections' data
        # the training checks' data: small enough for seconds per epoch on a CPU
        n = 300 if quick else 600 if cpu else min(5_000, len(self.data.train))
        self.small_cfg = DataConfig(name, val_size=100, subset=n)
        self.small = load_dataset(self.small_cfg, self.device)
        return self.add("data", "dataset", "ok", f"{self.data.summary()} ({time.perf_counter() - t:.1f} s)",
                        dataset=self.data.name, train=len(self.data.train), test=len(self.data.test),
                        source="imagefolder" if self.opts.data else "synthetic")

    def recipe(self, **kw) -> TrainConfig:
        batch = 32 if len(self.small.train) < 2_000 else 128
        base = dict(epochs=2, batch_size=batch, schedule="constant", device=str(self.device), probe=False)
        return TrainConfig(**{**base, **kw}).validate()

    def steps(self) -> int:
        if self.device.type == "cuda":
            return 100
        return 2 if self.opts.quick else 10

    def throughput_models(self) -> list[str]:
        return ["resnet20"] if self.opts.quick else ["resnet20", "resnet56", "resnet110"]

    def batch(self) -> int:
        return 128 if len(self.data.train) >= 128 else len(self.data.train)
