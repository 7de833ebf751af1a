"""MLflow, used directly through `MlflowClient`: one run per training run, named axes as tags.

The contract every producer (trainer, study) and consumer (figures, status) relies on:

* tags (strings; booleans as "true"/"false"): family, depth, block, shortcut, preact, width, seed,
  model, plus from a study: ablation, study, stage (search | confirm | train), variant, trial;
  diverged ("true"/"false") on every finished training run.
* params (`run_params`): the axes and `model` unprefixed, then arch.*, train.*, data.*,
  num_params and macs.
* metrics with step = epoch (1-based): train_loss, train_error, val_loss, val_error, test_loss,
  test_error, lr, epoch_seconds, images_per_second, iteration; errors are fractions in [0, 1].
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

import contextlib
import hashlib
import json
import logging
import os
import signal
import tempfile
from pathlib import Path
import re
import time
from typing import Iterator

from models.spec import ArchSpec

from ..errors import ConfigError, first_line, redact
from ..paths import default_tracking_uri, results_dir

AXES = ("family", "depth", "block", "shortcut", "preact", "width", "seed")  # on every run, old ones too
# Also tagged: `order` (He 2016b Fig. 4; "post"/"preact" repeat `preact`), and only where they
# matter the parameters of the shortcut kinds that use them (He 2016b
# Table 1: scale factors, the gate's initial bias, the dropout rate, option A's padding) and
# ghost BN's sub-batch. Runs differing in one of these are different variants.
def fmt(value) -> str:
    """The string form used for tags and params: lowercase booleans, compact numbers and lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ",".join(fmt(v) for v in value)
    return str(value)


def git_commit() -> str | None:
    """The commit the code runs at (logged as MLflow's own `mlflow.source.git.commit` tag)."""
    import subprocess
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def axis_tags(spec: ArchSpec, seed: int) -> dict[str, str]:
    """The axes every run is tagged with, so the MLflow UI can filter and group on them."""
    values = {"family": spec.family, "depth": spec.total_depth, "block": spec.block,
              "shortcut": spec.shortcut, "preact": spec.preact, "order": spec.order, "width": spec.width,
              "seed": seed, **shortcut_parameters(spec)}
    if spec.bn_batch is not None:
        values["bn_batch"] = spec.bn_batch
    return {k: fmt(v) for k, v in values.items()}


def shortcut_parameters(spec: ArchSpec) -> dict:
    """The fields that configure `spec`'s shortcut kind, where they differ from the defaults
    (option A's padding) or always (the constants of scale, gate and dropout shortcuts)."""
    from models.spec import SHORTCUT_FIELDS
    out = {}
    for name, kinds in SHORTCUT_FIELDS.items():
        if spec.shortcut in kinds and (name != "pad" or spec.pad != "append"):
            out[name] = getattr(spec, name)
    return out


def variant_name(spec: ArchSpec) -> str:
    """A readable, unique name of an architecture, e.g. 'cifar-d20-basic-A-post-w1'."""
    name = f"{spec.family}-d{spec.total_depth}-{spec.block}-{spec.shortcut}-{_ORDER_NAMES[spec.order]}-w{fmt(spec.width)}"
    name += "".join(f"-{k}{fmt(v)}" for k, v in shortcut_parameters(spec).items())
    if spec.bn_batch is not None:
        name += f"-bn{spec.bn_batch}"
    if spec.stages is not None and spec.family != "cifar":
        name += "-s" + "x".join(map(str, spec.stage_depths))
    if spec.downsample != "first":
        name += f"-down{spec.downsample}"
    if spec.zero_init_last:
        name += "-zinit"
    return name


_ORDER_NAMES = {"post": "post", "preact": "pre", "bn-after-add": "bnadd", "relu-before-add": "reluadd",
                "relu-preact": "relupre"}


def label(spec: ArchSpec) -> str:
    """The figures' name of an architecture (`results.VariantAxes.label`): 'plain-20', 'ResNet-20 (A)',
    'pre-act ResNet-110 (B)'; a net off the CIFAR basic w1 line says how it differs."""
    if spec.shortcut == "none":
        name = f"plain-{spec.total_depth}" + (" (pre-act)" if spec.preact else "")
    else:
        name = ("pre-act " if spec.preact else "") + f"ResNet-{spec.total_depth} ({spec.shortcut})"
    extra = [spec.order] if spec.order not in ("post", "preact") else []  # He 2016b Fig. 4 (b)-(d)
    extra += [f"{k}={fmt(v)}" for k, v in shortcut_parameters(spec).items()]
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
    import dataclasses
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


def client(uri: str | None = None):
    """An MlflowClient for `uri`, checked to be reachable; errors are one redacted line."""
    from mlflow.tracking import MlflowClient
    uri = uri or default_tracking_uri()
    quiet_mlflow()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    is_db = "://" in uri and not uri.startswith(("sqlite", "http://", "https://", "file:", "databricks"))
    if is_db:
        from ..database import check_database
        check_database(uri, "the MLflow tracking store", "check --tracking-uri / MLFLOW_TRACKING_URI")
    # An unreachable server would otherwise be retried with backoff for minutes.
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update({k: v for k, v in quick.items() if saved[k] is None})
    try:
        if uri.startswith("postgresql"):
            # The first client on an empty database creates MLflow's schema: once, not N times.
            from ..database import advisory_lock
            with advisory_lock(uri, "mlflow-schema"):
                c = MlflowClient(tracking_uri=uri)
                c.search_experiments(max_results=1)
        else:
            c = MlflowClient(tracking_uri=uri)
            c.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable
        if uri.startswith("file:"):
            # MLflow 3 refuses file stores with a paragraph that never names the path.
            path = uri.removeprefix("file://") if uri.startswith("file://") else uri.removeprefix("file:")
            cause = ("MLflow refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true"
                     if "MLFLOW_ALLOW_FILE_STORE" in str(e) else first_line(e, 200))
            raise ConfigError(f"cannot use the MLflow file store {path}: {cause}; "
                              f"use --tracking-uri sqlite:///{path.rstrip('/')}.db (or fix the path)") from None
        raise ConfigError(f"cannot reach the MLflow tracking store {redact(uri)}: {first_line(e, 200)}; "
                          "check --tracking-uri / MLFLOW_TRACKING_URI") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
    return c


def quiet_mlflow() -> None:
    """MLflow's INFO lines (schema creation and migration on a new store) are not ours to show."""
    for name in ("mlflow.store", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def mark_superseded(c, run_id: str) -> None:
    """Tag an interrupted attempt whose retry exists: the comparison view and the figures skip it."""
    c.set_tag(run_id, "superseded", "true")


def get_or_create_experiment(c, name: str) -> str:
    """The experiment id of `name`, created if needed; safe when several workers race to create it."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = c.tracking_uri
    location = None
    if uri.startswith("sqlite:///"):  # keep artifacts beside the local store, not in the CWD
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    elif not uri.startswith(("http://", "https://", "databricks")):
        # A database store (e.g. PostgreSQL) without a server: artifacts under results/, which
        # must be a shared directory when workers run on several machines. A tracking server
        # decides its own artifact root (--artifacts-destination).
        location = (results_dir() / "mlartifacts").resolve().as_uri()
    try:
        return c.create_experiment(name, artifact_location=location and f"{location}/{name}")
    except Exception:  # noqa: BLE001 - another worker created it first
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def ui_link(experiment_id: str) -> str:
    """Where runs, charts and group-by live in MLflow 3's UI (it opens in the GenAI view)."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"


class Tracker:
    """One MLflow run, written through the client (no global active run)."""

    def __init__(self, c, run_id: str) -> None:
        self.client, self.run_id = c, run_id

    @classmethod
    def start(cls, c, experiment: str, run_name: str, tags: dict | None = None,
              parent_run_id: str | None = None) -> "Tracker":
        exp_id = get_or_create_experiment(c, experiment)
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = c.create_run(exp_id, run_name=run_name, tags={k: fmt(v) for k, v in tags.items()})
        return cls(c, run.info.run_id)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag
        self.client.log_batch(self.run_id, tags=[RunTag(k, fmt(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_metric_series(self, key: str, values: list[float]) -> None:
        """One metric over steps 0..n-1 (e.g. the response std of each layer)."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(key, float(v), now, i) for i, v in enumerate(values)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_dict(self, obj, artifact_file: str) -> None:
        self.client.log_text(self.run_id, json.dumps(obj, indent=2, sort_keys=True, default=str), artifact_file)

    def log_state_dict(self, state_dict: dict, artifact_file: str = "model.pt", *,
                       model_name: str | None = None, step: int = 0) -> str | None:
        """The final weights: a run artifact, and with `model_name` also an MLflow logged model
        (listed in the Models view, linked to this run at `step`); returns its model id.

        Written through the client (create, upload, finalize, link): `mlflow.pytorch.log_model`
        would pickle the module and infer pip requirements, seconds per trial on a CPU."""
        import torch
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / artifact_file
            torch.save(state_dict, path)
            self.client.log_artifact(self.run_id, str(path))
            if model_name is None:
                return None
            run = self.client.get_run(self.run_id)
            model = self.client.create_logged_model(
                run.info.experiment_id, name=re.sub(r"[/:.%\"']", "_", model_name), source_run_id=self.run_id,
                model_type="pytorch-state-dict", tags={"run_name": run.info.run_name or ""})
            try:
                self.client.log_model_artifacts(model.model_id, tmp)
            except BaseException:
                self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
                raise
            self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
            self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step)])
            return model.model_id

    def log_dataset(self, data) -> None:
        """The training data as MLflow's run input (the UI's Datasets column and filter): name,
        a digest of the split's labels and sizes, the source, the split sizes as its profile."""
        import dataclasses
        from mlflow.entities import Dataset, DatasetInput, InputTag
        cfg = dataclasses.asdict(data.config)
        sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test),
                 "classes": data.num_classes, "input_size": data.input_size}
        h = hashlib.sha256(json.dumps({"config": cfg, "sizes": sizes}, sort_keys=True, default=str).encode())
        for split in (data.train, data.val, data.test):  # labels are small; images would cost a pass
            h.update(split.labels.detach().cpu().numpy().tobytes())
        name = str(cfg.get("name"))
        if Path(name).exists():  # an ImageFolder root
            source_type, uri = "local", Path(name).resolve().as_uri()
        elif name.startswith("cifar"):
            source_type, uri = "code", f"torchvision.datasets.{name.upper()} (root {cfg.get('root')})"
        else:
            source_type, uri = "code", f"runners.train.data ({name}, generated)"
        dataset = Dataset(name=data.name, digest=h.hexdigest()[:16], source_type=source_type,
                          source=json.dumps({"uri": uri}),
                          profile=json.dumps(sizes))
        inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])]
        # Workers starting together race to insert the experiment's one dataset row (MLflow's
        # SQL store checks, then inserts): the loser's retry finds the row and links to it.
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, datasets=inputs)
                return
            except Exception:  # noqa: BLE001 - MlflowException wrapping the store's IntegrityError
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so the run can be closed as KILLED."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` for the duration (main thread only)."""
    def handler(signum, frame):
        raise Terminated()
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def tracked_run(tracker: Tracker) -> Iterator[Tracker]:
    """End `tracker`'s run FINISHED, FAILED (exception) or KILLED (Ctrl-C, SIGTERM), never RUNNING."""
    try:
        with sigterm_raises():
            yield tracker
    except (KeyboardInterrupt, Terminated):
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    else:
        tracker.end("FINISHED")
