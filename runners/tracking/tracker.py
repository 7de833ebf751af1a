"""One MLflow run, written through the client: params, tags, metrics, artifacts, the dataset and
the final weights as a logged model; and the context that never leaves a run RUNNING."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Iterator

import requests
import torch
from mlflow.entities import (Dataset, DatasetInput, InputTag, LoggedModelOutput, LoggedModelStatus, Metric, Param,
                             RunTag)

from ..errors import redact
from ..signals import Terminated, sigterm_raises
from .naming import fmt
from .store import get_or_create_experiment


def _server_calls(method):
    """`method` of a Tracker, raising StoreUnreachable when its tracking server stopped answering."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with server_calls(self.client.tracking_uri):
            return method(self, *args, **kwargs)
    return call


class Tracker:
    """One MLflow run, written through the client (no global active run). Every call raises
    StoreUnreachable when the tracking server stopped answering."""

    def __init__(self, c, run_id: str) -> None:
        self.client, self.run_id = c, run_id

    @classmethod
    def start(cls, c, experiment: str, run_name: str, tags: dict | None = None,
              parent_run_id: str | None = None) -> "Tracker":
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        with server_calls(c.tracking_uri):
            exp_id = get_or_create_experiment(c, experiment)
            run = c.create_run(exp_id, run_name=run_name, tags={k: fmt(v) for k, v in tags.items()})
        return cls(c, run.info.run_id)

    @_server_calls
    def log_params(self, params: dict) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    @_server_calls
    def set_tags(self, tags: dict) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, fmt(v)) for k, v in tags.items()])

    @_server_calls
    def log_metrics(self, metrics: dict, step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    @_server_calls
    def log_metric_series(self, key: str, values: list[float]) -> None:
        """One metric over steps 0..n-1 (e.g. the response std of each layer)."""
        now = int(time.time() * 1000)
        items = [Metric(key, float(v), now, i) for i, v in enumerate(values)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    @_server_calls
    def log_dict(self, obj, artifact_file: str) -> None:
        self.client.log_text(self.run_id, json.dumps(obj, indent=2, sort_keys=True, default=str), artifact_file)

    @_server_calls
    def log_state_dict(self, state_dict: dict, artifact_file: str = "model.pt", *,
                       model_name: str | None = None, step: int = 0) -> str | None:
        """The final weights: a run artifact, and with `model_name` also an MLflow logged model
        (listed in the Models view, linked to this run at `step`); returns its model id.

        Written through the client (create, upload, finalize, link): `mlflow.pytorch.log_model`
        would pickle the module and infer pip requirements, seconds per trial on a CPU."""
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
            except BaseException as e:
                if not unanswered(e, self.client.tracking_uri):  # a server gone takes no FAILED either
                    self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
                raise
            self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
            self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step)])
            return model.model_id

    @_server_calls
    def log_dataset(self, data) -> None:
        """The training data as MLflow's run input (the UI's Datasets column and filter): name,
        a digest of the split's labels and sizes, the source, the split sizes as its profile."""
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
            except Exception as e:  # noqa: BLE001 - MlflowException wrapping the store's IntegrityError
                if attempt == 2 or unanswered(e, self.client.tracking_uri):
                    raise
                time.sleep(0.2 * (attempt + 1))

    @_server_calls
    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class Abandoned(Exception):
    """The run is no longer this process's to write (its trial was given to another worker while
    this one was paused): it is left exactly as it is, never ended by `tracked_run`."""


class StoreLost(Abandoned):
    """The tracking store went away under the run (a deleted `mlflow.db`): nothing more can be
    written to it, the run included."""


class StoreUnreachable(StoreLost):
    """The MLflow tracking server stopped answering (killed, its host or the network gone) through
    the process's bounded retries (runners/tracking/store.py SERVER_LIMITS)."""

    def __init__(self, uri: str) -> None:
        super().__init__(f"the MLflow tracking server at {redact(uri)} stopped answering")


def unanswered(error: BaseException, uri: str) -> bool:
    """Whether `error` is an http(s) tracking server not answering at all: a connection refused,
    reset or timed out, as requests raised it (MLflow wraps it in an MlflowException, as its cause
    or context). A server that answers with an error is not this: that fails the call as before."""
    if not uri.startswith(("http://", "https://")):
        return False
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (requests.ConnectionError, requests.Timeout)):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def server_calls(uri: str) -> Iterator[None]:
    """StoreUnreachable (its message naming the server, redacted) for a tracking server at `uri`
    that stopped answering a call of the block: MLflow's own error shows the URL, password and all."""
    try:
        yield
    except StoreLost:
        raise
    except Exception as e:
        if unanswered(e, uri):
            raise StoreUnreachable(uri) from None
        raise


@contextlib.contextmanager
def tracked_run(tracker: Tracker) -> Iterator[Tracker]:
    """End `tracker`'s run FINISHED, FAILED (exception) or KILLED (Ctrl-C, SIGTERM, SIGHUP, or an
    exception with `killed` set), never RUNNING; an `Abandoned` run is left as whoever took it over left it."""
    try:
        with sigterm_raises():
            yield tracker
    except Abandoned:
        raise
    except (KeyboardInterrupt, Terminated):
        tracker.end("KILLED")
        raise
    except BaseException as e:
        # An error marked `killed` (a lost process of a group: no fault of the run's) ends it
        # KILLED in the same call, so no signal that follows can leave it FAILED.
        tracker.end("KILLED" if getattr(e, "killed", False) else "FAILED")
        raise
    else:
        tracker.end("FINISHED")
