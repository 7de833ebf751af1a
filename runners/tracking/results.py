"""What an ablation study's MLflow experiment holds: its usable runs, grouped by variant.

Read through `MlflowClient` only, following the contract in `runners.tracking.runs`. Only FINISHED
runs of the `confirm` or `train` stage are used (a run without a stage tag is a plain
`ablate train` run and counts as `train`); `search` trials are tuned on validation data with
short budgets and never mix in. Every run left out is counted with its reason, so a partial
study says what it is missing.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ..errors import ConfigError
from . import runs as tracking

STAGES = ("confirm", "train")
CURVE_METRICS = ("train_error", "test_error", "iteration", "layer_response_std")


# -- what the store holds ------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """The tag axes except seed: the unit that seeds are repeats of."""

    family: str
    depth: int
    block: str
    shortcut: str
    preact: bool
    width: str

    @property
    def residual(self) -> bool:
        return self.shortcut != "none"

    @property
    def line(self) -> tuple:
        """What plain and residual twins share; a figure compares kinds within one line."""
        return (self.family, self.block, self.width)

    @property
    def kind(self) -> tuple:
        return (self.residual, self.preact, self.shortcut)

    def kind_label(self) -> str:
        if not self.residual:
            return "plain" + ("(pre-act)" if self.preact else "")
        return ("pre-act " if self.preact else "") + f"ResNet ({self.shortcut})"

    def label(self, with_line: bool = False) -> str:
        name = ("plain" if not self.residual else "ResNet") + f"-{self.depth}"
        if self.residual:
            name = ("pre-act " if self.preact else "") + name + f" ({self.shortcut})"
        elif self.preact:
            name += " (pre-act)"
        if with_line:
            name += f" [{self.family}, {self.block}, w{self.width}]"
        return name

    def sort_key(self) -> tuple:
        return (self.family, self.block, num(self.width), self.residual, self.preact,
                self.shortcut, self.depth)


@dataclass
class RunRecord:
    run_id: str
    variant: Variant
    seed: str
    stage: str
    diverged: bool
    params: dict[str, str]
    curves: dict[str, dict[int, float]]  # metric -> step -> value
    final_train: float = math.nan  # last logged step, as a fraction
    final_test: float = math.nan

    @property
    def converged(self) -> bool:
        return not self.diverged


@dataclass
class Study:
    name: str
    experiment_id: str
    by_variant: dict[Variant, list[RunRecord]]  # sorted by Variant.sort_key, runs by seed
    ignored: Counter = field(default_factory=Counter)  # reason -> runs not used

    @property
    def runs(self) -> list[RunRecord]:
        return [r for rs in self.by_variant.values() for r in rs]

    def lines(self) -> dict[tuple, list[Variant]]:
        out: dict[tuple, list[Variant]] = defaultdict(list)
        for v in self.by_variant:
            out[v.line].append(v)
        return dict(out)


def num(s) -> float:
    try:
        return float(s)
    except (TypeError, ValueError):
        return math.nan


def _seed_key(seed: str) -> tuple:
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def find_experiment(c, name: str):
    from mlflow.entities import ViewType
    exp = c.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in c.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000))
        raise ConfigError(f"no experiment named {name!r} in the store; existing: "
                          f"{', '.join(repr(n) for n in names) or '(none)'}")
    return exp


def load_study(c, name: str) -> Study:
    """The usable runs of experiment `name`, with the reason every other run was left out."""
    exp = find_experiment(c, name)
    runs, token = [], None
    while True:
        page = c.search_runs([exp.experiment_id], max_results=1000, page_token=token,
                             order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            break
    ignored: Counter = Counter()
    latest: dict[tuple[Variant, str], tuple] = {}
    for run in runs:
        tags, status = run.data.tags, run.info.status
        stage = tags.get("stage", "train")
        if stage not in STAGES:
            ignored[f"stage {stage}"] += 1
            continue
        if any(a not in tags for a in tracking.AXES):
            ignored["no axis tags (not a training run)"] += 1
            continue
        if status != "FINISHED":
            ignored[f"status {status}"] += 1
            continue
        v = Variant(tags["family"], int(num(tags["depth"])), tags["block"], tags["shortcut"],
                    tags["preact"] == "true", tags["width"])
        key = (v, tags["seed"])
        # A seed re-run (e.g. confirm after train) replaces the earlier one: pairs stay one-to-one.
        if key in latest:
            ignored["superseded by a later run of the same variant and seed"] += 1
        latest[key] = (run, v, stage)
    by_variant: dict[Variant, list[RunRecord]] = defaultdict(list)
    for (v, seed), (run, _, stage) in latest.items():
        by_variant[v].append(_record(c, run, v, seed, stage))
    ordered = {v: sorted(by_variant[v], key=lambda r: _seed_key(r.seed))
               for v in sorted(by_variant, key=Variant.sort_key)}
    return Study(name, exp.experiment_id, ordered, ignored)


def _record(c, run, v: Variant, seed: str, stage: str) -> RunRecord:
    curves = {}
    for key in CURVE_METRICS:
        if key in run.data.metrics:
            hist = sorted(c.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
            curves[key] = {int(m.step): float(m.value) for m in hist}
    rec = RunRecord(run.info.run_id, v, seed, stage, run.data.tags.get("diverged") == "true",
                    dict(run.data.params), curves)
    for attr, key in (("final_train", "train_error"), ("final_test", "test_error")):
        series = curves.get(key)
        setattr(rec, attr, series[max(series)] if series else math.nan)
    # An untagged run whose last error is NaN/inf diverged too; it must not vanish from a mean.
    if not (math.isfinite(rec.final_train) and math.isfinite(rec.final_test)):
        rec.diverged = True
    return rec
