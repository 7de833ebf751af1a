"""What a training run is called and tagged in MLflow: the contract every producer and consumer shares.

The contract every producer (trainer, study) and consumer (figures, status) relies on:

* tags (strings; booleans as "true"/"false"): family, depth, block, shortcut, preact, width, seed,
  model, plus from a study: ablation, study, stage (search | confirm | train), variant, trial;
  diverged ("true"/"false") on every finished training run.
* params (`run_params`): the axes and `model` unprefixed, then arch.*, train.*, data.*,
  num_params and macs.
* metrics with step = epoch (1-based): train_loss, train_error, val_loss, val_error, test_loss,
  test_error, lr, epoch_seconds, images_per_second, iteration; errors are fractions in [0, 1].
  {val,test}_error is the top-1 error of the configured evaluation (10-crop under
  dataset.ten_crop), {val,test}_error_top5 its top-5 (more than 5 classes); under ten_crop also
  {val,test}_error_1crop and _top5_1crop, the center crop's alone. With dataset.multi_scale,
  test_error_multiscale and test_error_top5_multiscale (He 2016a Table 4) at the last epoch.
  layer_response_std with step = the 3x3 layer's index (He 2016a Fig. 7).
* artifacts: config.json, complexity.json, layer_responses.json, model.pt (final state_dict).
* run name (`run_name`): the figures' name of the architecture and the seed, "ResNet-20 (A) s0".
* the dataset as a run input (name, digest, source, split sizes as its profile), and the final
  weights as an MLflow logged model (`model.pt` in it), listed in the experiment's Models view.
* `superseded=true` on an interrupted attempt whose retry exists (it ends KILLED).

A run always ends FINISHED, FAILED or KILLED: `tracked_run` maps exceptions, Ctrl-C and SIGTERM
to a terminal status, and the study runner closes runs of workers that died by SIGKILL.
"""
from __future__ import annotations
from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

from models.fields import fields_of, meta
from models.spec import ArchSpec

AXES = ("family", "depth", "block", "shortcut", "preact", "width", "seed")  # on every run, old ones too


def fmt(value) -> str:
    """The string form used for tags and params: lowercase booleans, compact numbers and lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ",".join(fmt(v) for v in value)
    return str(value)


def tagged_fields(spec: ArchSpec) -> dict:
    """The architecture fields a run of `spec` is tagged with, and their values, by each field's
    declared `tag` (models/fields.py): always; when it differs from its default; when its
    shortcut kind uses it (the constants of He 2016b Table 1's scale, gate and dropout
    shortcuts). Runs differing in one of these are different variants. Depth is the total depth."""
    out = {}
    for f in fields_of(spec):
        value, tag = getattr(spec, f.name), meta(f, "tag")
        kinds = meta(f, "kinds")
        if kinds is not None and spec.shortcut not in kinds:
            continue  # a field of another shortcut kind: not part of this net
        if meta(f, "blocks") is not None and spec.block not in meta(f, "blocks"):
            continue  # a field of another block kind (the bottleneck's stride on a basic net)
        if tag == "always" or (tag == "used" and kinds is not None) or (tag == "nondefault" and value != f.default):
            out[f.name] = spec.total_depth if f.name == "depth" else value
    return out


def axis_tags(spec: ArchSpec, seed: int) -> dict[str, str]:
    """The axes every run is tagged with, so the MLflow UI can filter and group on them."""
    return {k: fmt(v) for k, v in {**tagged_fields(spec), "seed": seed}.items()}


def shortcut_parameters(spec: ArchSpec) -> dict:
    """The tagged fields that configure `spec`'s shortcut kind (option A's padding where it is
    not the default; the constants of scale, gate and dropout shortcuts always)."""
    tagged = tagged_fields(spec)
    return {f.name: tagged[f.name] for f in fields_of(spec, "shortcut") if f.name in tagged}


def variant_name(spec: ArchSpec) -> str:
    """A readable, unique name of an architecture, e.g. 'cifar-d20-basic-A-post-w1': every tagged
    field, formatted as its declaration says (its `name`), in declaration order."""
    parts = []
    for f in fields_of(spec):
        tagged = tagged_fields(spec)
        if f.name not in tagged or meta(f, "name") is False:
            continue
        form, value = meta(f, "name"), tagged[f.name]
        parts.append(form(value) if callable(form) else (form or f.name + "{}").format(fmt(value)))
    return "-".join(parts)


def label(spec: ArchSpec) -> str:
    """The figures' name of an architecture (`results.VariantAxes.label`): 'plain-20', 'ResNet-20 (A)',
    'pre-act ResNet-110 (B)'; a net off the CIFAR basic w1 line says how it differs."""
    if spec.shortcut == "none":
        name = f"plain-{spec.total_depth}" + (" (pre-act)" if spec.preact else "")
    else:
        name = ("pre-act " if spec.preact else "") + f"ResNet-{spec.total_depth} ({spec.shortcut})"
    extra = [spec.order] if spec.order not in ("post", "preact") else []  # He 2016b Fig. 4 (b)-(d)
    shown = {f.name for f in fields_of(spec) if meta(f, "tag") != "always" and meta(f, "label", True)}
    extra += [f"{k}={fmt(v)}" for k, v in tagged_fields(spec).items() if k in shown]
    extra += [spec.family] if spec.family != "cifar" else []
    extra += [spec.block] if spec.block != "basic" else []
    extra += [f"w{fmt(spec.width)}"] if spec.width != 1 else []
    return " ".join([name, *extra])


def run_name(spec: ArchSpec, seed: int) -> str:
    """A run's name as the figures name its line, with the seed: 'ResNet-20 (A) s0'."""
    return f"{label(spec)} s{seed}"


def metric_key(name: str) -> str:
    """`name` as a legal MLflow metric key (no parentheses): 'ResNet-20 (A)' -> 'ResNet-20 A'."""
    return " ".join(re.sub(r"[^\w.\- :/]", " ", name).split())


def run_params(spec: ArchSpec, train_cfg, data_cfg, *, model_name: str | None = None,
               params: int | None = None, macs: int | None = None) -> dict[str, str]:
    """The params of a training run: the axes and `model` unprefixed (as the tags), the rest of
    the architecture as `arch.*`, the recipe as `train.*` and the data as `data.*`."""
    arch = spec.as_dict()
    out = dict(axis_tags(spec, train_cfg.seed))
    out["model"] = model_name or variant_name(spec)
    out.update(flatten({k: v for k, v in arch.items() if k not in AXES}, "arch."))
    out.update(flatten({k: v for k, v in dataclasses.asdict(train_cfg).items() if k != "seed"}, "train."))
    out.update(flatten(dataclasses.asdict(data_cfg), "data."))
    if params is not None:
        out["num_params"] = str(params)
    if macs is not None:
        out["macs"] = str(macs)
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """{'train': {'lr': 0.1}} -> {'train.lr': '0.1'} (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = fmt(v) if v is not None else "none"
    return out


def git_commit() -> str | None:
    """The commit the code runs at (logged as MLflow's own `mlflow.source.git.commit` tag)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
