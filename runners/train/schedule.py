"""How long a run is and what its learning rate is at every iteration (He 2016a's recipe)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .config import TrainConfig

WARMUP_EMA = 0.9  # the warm-up watches a running (bias-corrected EMA) training error, ~10 batches


@dataclass(frozen=True)
class Plan:
    """How many steps: the last partial batch of an epoch is dropped (batches are randperm
    slices, so every image is seen over the epochs); an iteration-length run ends mid-epoch."""

    steps_per_epoch: int
    epochs: int
    iterations: int

    @classmethod
    def of(cls, cfg: TrainConfig, n_train: int) -> "Plan":
        spe = max(1, n_train // cfg.batch_size)
        n, unit = cfg.length
        if unit == "epochs":
            return cls(spe, n, n * spe)
        return cls(spe, math.ceil(n / spe), n)

    def steps_in(self, epoch: int) -> int:  # epoch is 1-based
        return min(self.steps_per_epoch, self.iterations - (epoch - 1) * self.steps_per_epoch)


class LRSchedule:
    """The lr of iteration k (0-based): the recipe's schedule, behind the paper's warm-up.

    step:     lr * gamma^(milestones passed); milestones in the run's unit, default 1/2 and 3/4
              of it (He 2016a: 0.1, /10 at 32k and 48k of 64k iterations).
    cosine:   lr * (1 + cos(pi k / K)) / 2.   constant: lr.
    plateau:  lr * gamma^(drops), one drop each time the epochs' error stops improving (He 2016a
              Sec. 3.4's ImageNet rule as stated; the preset's 30/60-of-90 milestones are the fixed
              form fb.resnet.torch uses). Decided at epoch ends, on numbers every rank shares.
    warm-up:  He 2016a Sec. 4.2 (ResNet-110): warmup_lr until the running training error falls
              below warmup_until_error, then back to the schedule's lr for the current iteration
              (so it composes with the milestones). It never raises the lr above the schedule and
              never comes back. With warmup_iterations (He 2016b Appendix: 400), it ends after that
              many iterations instead.
    """

    def __init__(self, cfg: TrainConfig, plan: Plan) -> None:
        self.cfg, self.total = cfg, plan.iterations
        n, unit = cfg.length
        per_unit = plan.steps_per_epoch if unit == "epochs" else 1
        milestones = cfg.milestones if cfg.milestones is not None else (n / 2, 3 * n / 4)
        self.boundaries = sorted(round(m * per_unit) for m in milestones)
        self.warming = cfg.warmup
        self.ema, self.count = 0.0, 0
        self.drops, self.best, self.stale = 0, math.inf, 0  # schedule=plateau

    def base(self, k: int) -> float:
        cfg = self.cfg
        if cfg.schedule == "step":
            return cfg.lr * cfg.gamma ** sum(k >= b for b in self.boundaries)
        if cfg.schedule == "plateau":
            return cfg.lr * cfg.gamma ** self.drops
        if cfg.schedule == "cosine":
            return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(k, self.total) / self.total))
        return cfg.lr

    def lr(self, k: int) -> float:
        return min(self.cfg.warmup_lr, self.base(k)) if self.warming else self.base(k)

    def observe(self, k: int, batch_error: float) -> None:
        """Feed iteration k's training error; ends the warm-up when the running error is low
        (He 2016a), or after warmup_iterations (He 2016b) when that is set."""
        if not self.warming:
            return
        if self.cfg.warmup_iterations is not None:
            self.warming = k + 1 < self.cfg.warmup_iterations
            return
        self.count += 1
        self.ema = WARMUP_EMA * self.ema + (1 - WARMUP_EMA) * batch_error
        if self.ema / (1 - WARMUP_EMA ** self.count) < self.cfg.warmup_until_error:
            self.warming = False

    def epoch_end(self, metrics: dict) -> None:
        """schedule=plateau: feed an epoch's errors (never the test error); drop the lr after
        plateau_patience epochs without an improvement of plateau_threshold on the best."""
        if self.cfg.schedule != "plateau":
            return
        error = metrics.get("val_error", metrics["train_error"])
        if error < self.best - self.cfg.plateau_threshold:
            self.best, self.stale = error, 0
            return
        self.stale += 1
        if self.stale >= self.cfg.plateau_patience:
            self.drops, self.stale = self.drops + 1, 0

    def state_dict(self) -> dict:
        return {"warming": self.warming, "ema": self.ema, "count": self.count,
                "drops": self.drops, "best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.warming, self.ema, self.count = bool(state["warming"]), float(state["ema"]), int(state["count"])
        self.drops, self.best, self.stale = int(state.get("drops", 0)), float(state.get("best", math.inf)), \
            int(state.get("stale", 0))
