"""What an ablation study's MLflow experiment holds: its usable runs, grouped by variant.

Read through `MlflowClient` only, following the contract in `runners.tracking.naming`. Only FINISHED
runs of the `confirm` or `train` stage are used (a run without a stage tag is a plain
`ablate train` run and counts as `train`); `search` trials are tuned on validation data with
short budgets and never mix in. Every run left out is counted with its reason, so a partial
study says what it is missing.
"""
from __future__ import annotations

import math
import json
import os
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import ViewType

from ..errors import ConfigError
from .naming import AXES

STAGES = ("confirm", "train")
# Unprefixed params that are tags but not variant axes (seed: runs of a variant repeat over it).
NOT_AXES = ("model", "seed")
CURVE_METRICS = ("train_error", "test_error", "train_loss", "iteration", "layer_response_std")


# -- what the store holds ------------------------------------------------------------------------
@dataclass(frozen=True)
class VariantAxes:
    """One variant of a study as its runs are tagged: the axis tags except seed, any further axis
    tags (`extra`), and `detail`, which tells apart variants whose axes agree (a recipe override
    such as '+warmup=true', or the study's variant key where nothing shorter does)."""

    family: str
    depth: int
    block: str
    shortcut: str
    preact: bool
    width: str
    extra: tuple[tuple[str, str], ...] = ()  # (tag, value) of axes beyond naming.AXES, sorted
    detail: str = ""

    @property
    def residual(self) -> bool:
        return self.shortcut != "none"

    @property
    def line(self) -> tuple:
        """What plain and residual twins share; a figure compares kinds within one line."""
        return (self.family, self.block, self.width)

    @property
    def kind(self) -> tuple:
        """Everything but depth and the line: one curve per depth of a kind."""
        return (self.residual, self.preact, self.shortcut, self.extra, self.detail)

    def _suffix(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.extra)
        return (f" [{extra[2:]}]" if extra else "") + (f" {self.detail}" if self.detail else "")

    def kind_label(self) -> str:
        if not self.residual:
            return "plain" + (" (pre-act)" if self.preact else "") + self._suffix()
        return ("pre-act " if self.preact else "") + f"ResNet ({self.shortcut})" + self._suffix()

    def label(self, with_line: bool = False) -> str:
        name = ("plain" if not self.residual else "ResNet") + f"-{self.depth}"
        if self.residual:
            name = ("pre-act " if self.preact else "") + name + f" ({self.shortcut})"
        elif self.preact:
            name += " (pre-act)"
        name += self._suffix()
        if with_line:
            name += f" [{self.family}, {self.block}, w{self.width}]"
        return name

    def sort_key(self) -> tuple:
        return (self.family, self.block, parse_float(self.width), self.residual, self.preact,
                self.shortcut, self.extra, self.detail, self.depth)


@dataclass
class RunRecord:
    run_id: str
    variant: VariantAxes
    seed: str
    diverged: bool
    params: dict[str, str]
    curves: dict[str, dict[int, float]]  # metric -> step -> value
    final_train: float = math.nan  # last logged step, as a fraction
    final_test: float = math.nan
    finals: dict[str, float] = field(default_factory=dict)  # every val_*/test_* metric's last value
    device: str | None = None  # where it trained, from config.json when the params do not say
    precision: str | None = None  # fp32 | tf32 | bf16, as it trained; None: unknown

    @property
    def converged(self) -> bool:
        return not self.diverged


@dataclass
class Study:
    name: str
    experiment_id: str
    by_variant: dict[VariantAxes, list[RunRecord]]  # sorted by VariantAxes.sort_key, runs by seed
    ignored: Counter = field(default_factory=Counter)  # reason -> runs not used
    left_out: dict[str, list[str]] = field(default_factory=dict)  # reason -> those runs' names, for the notes

    @property
    def runs(self) -> list[RunRecord]:
        return [r for rs in self.by_variant.values() for r in rs]

    def lines(self) -> dict[tuple, list[VariantAxes]]:
        out: dict[tuple, list[VariantAxes]] = defaultdict(list)
        for v in self.by_variant:
            out[v.line].append(v)
        return dict(out)


def parse_float(s) -> float:
    """A tag or param string as a float; NaN when it is not a number."""
    try:
        return float(s)
    except (TypeError, ValueError):
        return math.nan


def _seed_key(seed: str) -> tuple:
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def find_experiment(c, name: str):
    exp = c.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in c.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000))
        raise ConfigError(f"no experiment named {name!r} in the store; existing: "
                          f"{', '.join(repr(n) for n in names) or '(none)'}")
    return exp


def axis_names(tags: dict, params: dict) -> tuple[str, ...]:
    """The axes a run is tagged with: every tag also logged as an unprefixed param (`run_params`
    logs the axis tags so), plus the required `naming.AXES`, so a new axis needs no change here."""
    found = {k for k in tags if k in params and "." not in k and k not in NOT_AXES}
    return tuple(AXES) + tuple(sorted(found - set(AXES)))


def load_study(c, name: str) -> Study:
    """The usable runs of experiment `name`, with the reason every other run was left out.

    A variant is every axis tag but seed, and the study's `variant` tag where a run has one:
    variants that differ only in a recipe override (e.g. warm-up on/off) or in a new axis stay
    apart. A run without a `variant` tag (a plain `ablate train` run) joins the study variant
    with the same axes when exactly one has them."""
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
    left_out: dict[str, list[str]] = defaultdict(list)

    def leave_out(reason: str, run) -> None:
        ignored[reason] += 1
        left_out[reason].append(run.info.run_name or run.info.run_id)
    usable = []  # (axes key, variant tag or None, seed, run), oldest first
    for run in runs:
        tags, status = run.data.tags, run.info.status
        stage = tags.get("stage", "train")
        if stage not in STAGES:
            leave_out(f"stage {stage}", run)
            continue
        if any(a not in tags for a in AXES):
            leave_out("no axis tags (not a training run)", run)
            continue
        if status != "FINISHED":
            leave_out(f"status {status}", run)
            continue
        axes = tuple((a, tags[a]) for a in axis_names(tags, run.data.params) if a != "seed")
        usable.append((axes, tags.get("variant"), tags["seed"], run))
    keys_of: dict[tuple, set] = defaultdict(set)  # axes -> the variant tags seen with them
    for axes, key, _, _ in usable:
        if key is not None:
            keys_of[axes].add(key)
    latest: dict[tuple, tuple] = {}
    for axes, key, seed, run in usable:
        if key is None and len(keys_of[axes]) == 1:
            key = next(iter(keys_of[axes]))
        # A seed re-run (e.g. confirm after train) replaces the earlier one: pairs stay one-to-one.
        if (axes, key, seed) in latest:
            leave_out("superseded by a later run of the same variant and seed", latest[(axes, key, seed)])
        latest[(axes, key, seed)] = run
    groups: dict[tuple, set] = defaultdict(set)  # axes -> the variant keys left after joining
    for axes, key, _ in latest:
        groups[axes].add(key)
    variants = {(axes, key): _variant(axes, key, groups[axes]) for axes, key, _ in latest}
    by_variant: dict[VariantAxes, list[RunRecord]] = defaultdict(list)
    for (axes, key, seed), run in latest.items():
        v = variants[(axes, key)]
        by_variant[v].append(_record(c, run, v, seed))
    ordered = {v: sorted(by_variant[v], key=lambda r: _seed_key(r.seed))
               for v in sorted(by_variant, key=VariantAxes.sort_key)}
    return Study(name, exp.experiment_id, ordered, ignored, dict(left_out))


def _variant(axes: tuple, key: str | None, keys: set) -> VariantAxes:
    """The variant of runs with these axis tags and this `variant` tag; `keys` are all the
    variant tags (None: untagged) found with the same axes."""
    tags = dict(axes)
    # `order` post/preact says again what `preact` says; only He 2016b's orders (b)-(d) are extra.
    extra = tuple((k, v) for k, v in axes
                  if k not in AXES and not (k == "order" and v in ("post", "preact")))
    detail = ""
    if len(keys) > 1 and key is None:
        detail = "(no variant tag)"
    elif len(keys) > 1:
        # Twins on every axis tag. A study's key is `variant_name(arch)` + '+field=value' per
        # recipe override (runners.study.spec): the override part names the difference when it
        # is unique among the twins, the whole key otherwise.
        suffix = {k: k[k.index("+"):] if k and "+" in k else "" for k in keys}
        detail = suffix[key] if list(suffix.values()).count(suffix[key]) == 1 else key
    return VariantAxes(tags["family"], int(parse_float(tags["depth"])), tags["block"], tags["shortcut"],
                       tags["preact"] == "true", tags["width"], extra, detail)


def _record(c, run, v: VariantAxes, seed: str) -> RunRecord:
    curves = {}
    for key in CURVE_METRICS:
        if key in run.data.metrics:
            hist = sorted(c.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
            curves[key] = {int(m.step): float(m.value) for m in hist}
    params = dict(run.data.params)
    finals = {k: float(x) for k, x in run.data.metrics.items() if k.startswith(("val_", "test_"))}
    rec = RunRecord(run.info.run_id, v, seed, run.data.tags.get("diverged") == "true", params, curves, finals=finals)
    for attr, key in (("final_train", "train_error"), ("final_test", "test_error")):
        series = curves.get(key)
        setattr(rec, attr, series[max(series)] if series else math.nan)
    # An untagged run whose last error is NaN/inf diverged too; it must not vanish from a mean.
    if not (math.isfinite(rec.final_train) and math.isfinite(rec.final_test)):
        rec.diverged = True
    rec.device, rec.precision = _runtime(c, run.info.run_id, params)
    return rec


def _precision(precision: str | None, amp: str | None, device: str | None) -> str | None:
    """What a run computed in on `device` (None: not known here). `train.precision` (fp32, tf32,
    bf16) names it, tf32 being fp32 on a CPU; a run logged before that field has `train.amp`
    instead: bf16 is bf16, auto was bf16 on CUDA, and off was fp32 with torch's default cuDNN
    TF32 convolutions on CUDA (tf32), plain fp32 on a CPU."""
    cuda = None if device in (None, "auto") else device.startswith("cuda")
    if precision is not None:
        return precision if precision != "tf32" else (None if cuda is None else "tf32" if cuda else "fp32")
    if amp == "bf16":
        return "bf16"
    if amp in ("auto", "off") and cuda is not None:
        return ("bf16" if amp == "auto" else "tf32") if cuda else "fp32"
    return None


def _runtime(c, run_id: str, params: dict) -> tuple[str | None, str | None]:
    """(device, precision) of a run: from the params where they decide it, else its config.json
    (device=auto resolves at run time; the trainer records what it resolved to, and the precision
    it computed in; an older config.json says `amp`, whether bf16 autocast was on)."""
    device, precision, amp = params.get("train.device"), params.get("train.precision"), params.get("train.amp")
    known = _precision(precision, amp, device)
    if known is not None or (precision is None and amp is None):
        return (device if device not in (None, "auto") else None), known
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run otherwise
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = c.download_artifacts(run_id, "config.json", tmp)
            cfg = json.loads(Path(path).read_text())
    except Exception:  # noqa: BLE001 - no artifact (e.g. a store copied without them): unknown
        return None, None
    device = str(cfg.get("device"))
    if "precision" in cfg:
        return device, cfg["precision"]
    return device, "bf16" if cfg.get("amp") else _precision(None, "off", device)


def unfinished(c, study: Study) -> str | None:
    """Why `study` is not finished, in a few words ("12 of 30 runs finished, the study KILLED"),
    read from its parent run (stage=study: status, and the planned variants x seeds); None when
    it is finished, or has no parent run (runs logged by `ablate train` alone)."""
    parents = c.search_runs([study.experiment_id], filter_string="tags.stage = 'study'", max_results=1)
    if not parents or parents[0].info.status == "FINISHED":
        return None
    parent = parents[0]
    params = parent.data.params
    try:
        planned = int(params["variants"]) * len(params["seeds"].split(","))
    except (KeyError, ValueError):
        planned = None
    done = f"{len(study.runs)} of {planned} runs finished" if planned else f"{len(study.runs)} runs finished"
    return f"{done}, the study {parent.info.status}"
