"""`analyze`: run the analyses on a finished study's runs (or, with init=True, on a spec never
trained), resumably, writing figures and JSON under results/figures/<study>/analysis/ and logging
them to the study's parent run (artifact path `analysis/`).

Work is cut into units (one run, or a pair of runs: twins for CKA, consecutive seeds for the
landscape's interpolation). Each analysis keeps one JSON, `<name>.json`, holding its options, the
units computed under those options (keyed on the run ids), its summary over seeds and the digest
of the runs that summary covers. It is rewritten after every unit, so an interrupted run resumes
at the next unit; an analysis whose JSON already covers the same runs with the same options,
logged, is skipped and said so. Changing an analysis' options discards its units.

The library parses no arguments and prints nothing: it reports to the `Progress` handed in.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import io
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import torch

from ..errors import ConfigError
from ..paths import default_tracking_uri, results_dir
from ..study.progress import duration
from ..study.spec import load_spec
from ..tracking.results import load_study
from ..tracking.store import client
from . import cka, gradients, landscape, lesion, signal
from .loading import DataCache, TrainedRun, load_weights, trained_run
from .summary import arch_label, label, style, twins

ANALYSES = OrderedDict((m.NAME, m) for m in (lesion, landscape, cka, gradients, signal))
INIT_ONLY = ("signal",)  # the analyses that need no trained weights
SAMPLING = 2


@dataclass(frozen=True)
class Options:
    """Sizes of the analyses (each analysis' own fields are in its OPTIONS); the defaults fit a
    few minutes per net on 2 CPU cores."""

    images: int = 500  # test images: lesion errors, and BN statistics of a net at init (gradients)
    draws: int = 3  # random sets per k (lesion) and random reorderings per k
    train_images: int = 128  # training images of the loss landscape
    grid: int = 11  # points of the 1D slice and the interpolation (odd: the origin is on it)
    grid2d: int = 9  # points per axis of the 2D slice (odd)
    cka_images: int = 256  # test images of CKA
    cka_batch: int = 256  # CKA minibatch (Nguyen et al.'s minibatch CKA when below cka_images)
    sweep_points: int = 64  # points along each input sweep (gradients)
    sweeps: int = 4  # image pairs swept
    grad_batch: int = 128  # training images of the per-layer gradient norms
    signal_images: int = 128  # Gaussian inputs of the signal propagation plots

    def validate(self) -> "Options":
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a positive integer, got {v!r}")
        for name in ("grid", "grid2d"):
            if getattr(self, name) % 2 == 0 or getattr(self, name) < 3:
                raise ConfigError(f"--{name} must be odd and >= 3 (the origin is the middle point), "
                                  f"got {getattr(self, name)}")
        if self.cka_batch < 4 or self.cka_images < 4:
            raise ConfigError("--cka-images and --cka-batch must be >= 4 (unbiased HSIC needs 4 images)")
        if self.sweep_points < 2:
            raise ConfigError(f"--sweep-points must be >= 2, got {self.sweep_points}")
        return self

    def of(self, analysis: str) -> dict:
        """The options an analysis' results depend on (its JSON is keyed on them), with the
        version of the image sampling (v2: a fixed random draw of each split, not its first n)."""
        return {**{k: getattr(self, k) for k in ANALYSES[analysis].OPTIONS}, "sampling": SAMPLING}


class Progress:
    """`[k/N] what (elapsed, ETA)` lines and notes, written to `stream`."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.clock = stream, clock
        self.started, self.total, self.k = clock(), 0, 0

    def plan(self, total: int) -> None:
        self.total, self.k, self.started = total, 0, self.clock()

    def unit(self, what: str) -> None:
        self.k += 1
        took = self.clock() - self.started
        eta = f", ETA {duration(took / (self.k - 1) * (self.total - self.k + 1))}" if self.k > 1 else ""
        self.note(f"[{self.k}/{self.total}] {what} (elapsed {duration(took)}{eta})")

    def note(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


@dataclass
class Outcome:
    out: Path
    written: list[Path]
    skipped: list[str]  # analyses already done, with why
    notes: list[str]  # runs left out and why, notes of the analyses
    logged_to: str | None  # the parent run id, when logged
    seconds: float


def parse_only(only: str | None, init: bool) -> list[str]:
    names = list(ANALYSES) if not only else [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise ConfigError(f"unknown analysis {', '.join(unknown)}; known: {', '.join(ANALYSES)}")
    if init:
        trained = [n for n in names if n not in INIT_ONLY]
        if only and trained:
            raise ConfigError(f"--init analyses a spec never trained: only {', '.join(INIT_ONLY)} "
                              f"needs no weights, not {', '.join(trained)}")
        names = [n for n in names if n in INIT_ONLY]
    return names


# -- the runs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpecVariant:
    """A spec's variant as the reports see it (what `VariantAxes` offers, from an ArchSpec)."""

    key: str
    arch: object

    residual = property(lambda self: self.arch.shortcut != "none")
    depth = property(lambda self: self.arch.total_depth)
    family = property(lambda self: self.arch.family)
    block = property(lambda self: self.arch.block)
    line = property(lambda self: (self.arch.family, self.arch.block, str(self.arch.width)))

    def label(self) -> str:
        return arch_label(self.arch)


def _select(items, variants: str | None, seeds: str | None, name_of, seed_of):
    pats = [p.strip() for p in variants.split(",")] if variants else None
    try:
        wanted = {int(s) for s in seeds.split(",")} if seeds else None
    except ValueError:
        raise ConfigError(f"--seeds takes integers separated by commas, got {seeds!r}") from None
    out = [x for x in items if (pats is None or any(fnmatch.fnmatchcase(n, p) for p in pats for n in name_of(x)))
           and (wanted is None or seed_of(x) in wanted)]
    if not out:
        raise ConfigError("no runs match --variants/--seeds" if (pats or wanted) else "the study has no finished runs")
    return out


def init_runs(spec, variants: str | None, seeds: str | None) -> list:
    cells = [(v, s) for v in spec.variants for s in spec.seeds]
    cells = _select(cells, variants, seeds, lambda c: (c[0].key, SpecVariant(c[0].key, c[0].arch).label()),
                    lambda c: c[1])
    return [TrainedRun(f"{v.key}/seed={s}", SpecVariant(v.key, v.arch), s, v.arch, None, None, {})
            for v, s in cells]


def _parent(c, study) -> str:
    runs = c.search_runs([study.experiment_id], filter_string="tags.stage = 'study'",
                         order_by=["attributes.start_time DESC"], max_results=10)
    if not runs:
        raise ConfigError(f"experiment {study.name!r} has no study parent run (tag stage=study); "
                          "is it an `ablate run` study?")
    status = runs[0].info.status
    if status != "FINISHED":
        raise ConfigError(f"study {study.name!r} is not finished (its parent run is {status}); "
                          "finish it with `ablate run SPEC` first")
    return runs[0].info.run_id


class Context:
    """What a unit computes with: options, nets (an LRU of loaded weights), data, checkpoints."""

    def __init__(self, opts: Options, client=None, study: str | None = None, records=None) -> None:
        self.opts, self.client, self.study = opts, client, study
        self.records = records or {}
        self.datasets = DataCache()
        self._nets: OrderedDict = OrderedDict()

    def net(self, run):
        if run.run_id not in self._nets:
            self._nets[run.run_id] = load_weights(self.client, run)
            while len(self._nets) > 6:
                self._nets.popitem(last=False)
        self._nets.move_to_end(run.run_id)
        return self._nets[run.run_id]

    def data(self, run):
        return self.datasets.get(run.data)

    def epochs(self, run) -> int:
        rec = self.records.get(run.run_id)
        curve = rec.curves.get("train_error") if rec is not None else None
        return max(curve) if curve else int(run.config.get("train", {}).get("epochs") or 0)

    def checkpoint(self, run):
        """(epoch, state_dict) of the run's checkpoint, if the trial left one (usually not)."""
        key = run.variant_key
        if not key or not self.study:
            return None
        path = results_dir() / "checkpoints" / self.study / "confirm" / key / f"seed{run.seed}" / "checkpoint.pt"
        if not path.is_file():
            return None
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            return int(ck["epoch"]), ck["model"]
        except Exception:  # noqa: BLE001 - unreadable: as if absent (the note says it is missing)
            return None


def units(name: str, runs) -> list[tuple[str, str, tuple]]:
    """[(unit key, what, runs)] of an analysis over `runs`."""
    out = [(r.run_id, f"{name} {label(r.variant)} s{r.seed}", (r,)) for r in runs]
    if name == "landscape":
        out += [(landscape.interp_key(a, b), f"landscape interpolation {label(a.variant)} s{a.seed}-s{b.seed}", (a, b))
                for a, b in landscape.interpolation_pairs(runs)]
    if name == "cka":
        out += [(cka.twin_key(a, b), f"cka twins {label(a.variant)} x {label(b.variant)} s{a.seed}", (a, b))
                for _, _, pairs in twins(runs) for a, b in pairs]
    return out


def compute_unit(name: str, ctx: Context, key: str, runs: tuple) -> dict:
    if key.startswith("interp:"):
        return landscape.interpolate(ctx, *runs)
    if key.startswith("twin:"):
        return cka.compare_twins(ctx, *runs)
    return ANALYSES[name].compute(ctx, runs[0])


# -- orchestration ---------------------------------------------------------------------------------
def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=_jsonable, allow_nan=False))
    os.replace(tmp, path)


def _jsonable(x):
    return x.item() if hasattr(x, "item") else str(x)  # numpy scalars


def _clean(obj):
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def analyze(spec_path: str, *, overrides=(), only: str | None = None, tracking_uri: str | None = None,
            variants: str | None = None, seeds: str | None = None, opts: Options = Options(),
            init: bool = False, out: str | Path | None = None, progress: Progress | None = None) -> Outcome:
    """Run the chosen analyses; see the module docstring. Bad input raises ConfigError before
    anything is written."""
    progress = progress or Progress(io.StringIO())
    names = parse_only(only, init)
    opts.validate()
    spec = load_spec(spec_path, list(overrides), check_data=False)
    c = parent = None
    records, notes = {}, []
    if init:
        runs = init_runs(spec, variants, seeds)
    else:
        runs, c, parent, records, notes = _trained(spec.name, tracking_uri, variants, seeds)
    ctx = Context(opts, c, spec.name, records)
    if any(n not in INIT_ONLY for n in names):
        for r in runs:  # a missing dataset is bad input too: found before anything is written
            ctx.data(r)
    folder = Path(out) if out else results_dir() / "figures" / spec.name.replace("/", "_") / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    states, todo, skipped = {}, [], []
    run_ids = sorted(r.run_id for r in runs)
    for name in names:
        path = folder / f"{name}.json"
        state = json.loads(path.read_text()) if path.is_file() else {}
        options = opts.of(name)
        if state.get("options_digest") != digest(options):
            state = {"units": {}}
        state.update({"analysis": name, "paper": ANALYSES[name].PAPER, "options": options,
                      "options_digest": digest(options)})
        wanted = units(name, runs)
        if state.get("runs_digest") == digest(run_ids) and state.get("logged") \
                and all(k in state["units"] for k, _, _ in wanted):
            skipped.append(f"{name}: already done for these {len(runs)} runs with these options ({path})")
            continue
        states[name] = (path, state)
        todo += [(name, k, what, rs) for k, what, rs in wanted if k not in state["units"]]
    for s in skipped:
        progress.note(f"skipped: {s}")
    progress.plan(len(todo))
    for name, key, what, rs in todo:
        progress.unit(what)
        path, state = states[name]
        state["units"][key] = _clean(compute_unit(name, ctx, key, rs))
        state.update({"runs_digest": None, "logged": False})
        _write_json(path, state)
    written = []
    for name, (path, state) in states.items():
        with style():
            table, files = ANALYSES[name].report(state["units"], runs, folder)
        state.update({"summary": _clean(table), "runs": run_ids, "runs_digest": digest(run_ids),
                      "files": [p.name for p in files], "logged": parent is None,  # nothing to log to
                      "seconds": round(time.monotonic() - started, 1)})
        _write_json(path, state)
        if parent is not None:
            for p in [path, *files]:
                c.log_artifact(parent, str(p), "analysis")
            state["logged"] = True
            _write_json(path, state)
        written += [path, *files]
        notes += [f"{name}: {n}" for n in (table.get("notes") or [])]
    return Outcome(folder, written, skipped, notes, parent, time.monotonic() - started)


def _trained(name: str, tracking_uri: str | None, variants, seeds):
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ConfigError(f"no MLflow store at {uri[len('sqlite:///'):]}; run the study first "
                          "(`ablate run SPEC`), give --tracking-uri, or use --init for a spec never trained")
    c = client(uri)
    study = load_study(c, name)
    parent = _parent(c, study)
    diverged = [r for r in study.runs if not r.converged]
    notes = [f"{len(diverged)} diverged runs left out (they log no weights)"] if diverged else []
    records = [r for r in study.runs if r.converged]
    records = _select(records, variants, seeds, lambda r: (r.variant.label(), r.params.get("model", "")),
                      lambda r: int(r.seed) if r.seed.lstrip("-").isdigit() else None)
    runs = [trained_run(c, rec) for rec in records]
    return runs, c, parent, {r.run_id: r for r in records}, notes
