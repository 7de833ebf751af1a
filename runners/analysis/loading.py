"""A finished run brought back from MLflow: its net (rebuilt from config.json, loaded from model.pt),
its data, and the small evaluation helpers every analysis shares.

Nothing is retrained: the architecture is `config.json`'s "arch" (an `ArchSpec` as a dict), the
weights the run's `model.pt` artifact (its final state_dict), the data the run's own data config
(`runners.train.config.DataConfig`), loaded by `runners.train.data.load_dataset` on the CPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.network import ResNet
from models.spec import ArchSpec

from ..errors import ConfigError
from ..train.config import DataConfig
from ..train.data import load_dataset

EVAL_BATCH = 250  # the trainer's CPU evaluation batch (README, Performance)


@dataclass
class TrainedRun:
    """One confirmation run as the analyses see it."""

    run_id: str
    variant: object  # runners.tracking.results.VariantAxes
    seed: int
    arch: ArchSpec
    data: DataConfig
    num_classes: int
    config: dict  # the whole config.json
    variant_key: str | None = None  # the study's `variant` tag: where its checkpoints lived

    def build(self) -> ResNet:
        """The architecture, freshly initialised as the trainer does it (torch.manual_seed(seed)
        right before building), in eval mode."""
        return init_net(self.arch, self.seed, self.num_classes)


def init_net(arch: ArchSpec, seed: int, num_classes: int | None = None) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(arch, num_classes=num_classes).eval()


def arch_from_dict(d: dict) -> ArchSpec:
    fields = {f.name for f in dataclasses.fields(ArchSpec)}
    return ArchSpec(**{k: v for k, v in d.items() if k in fields}).validate()


def data_from_dict(d: dict) -> DataConfig:
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    return DataConfig(**{k: v for k, v in d.items() if k in fields})


def _download(c, run_id: str, artifact: str, tmp: str) -> Path:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return Path(c.download_artifacts(run_id, artifact, tmp))
    except Exception as e:  # noqa: BLE001 - MlflowException or OSError: the artifact is not there
        raise ConfigError(f"run {run_id} has no readable {artifact} artifact ({type(e).__name__}); "
                          "was the store copied without its artifacts (mlartifacts/)?") from None


def trained_run(c, record) -> TrainedRun:
    """A `runners.tracking.results.RunRecord`'s net and data configs (config.json only)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = json.loads(_download(c, record.run_id, "config.json", tmp).read_text())
    classes = cfg.get("dataset", {}).get("classes")
    return TrainedRun(record.run_id, record.variant, int(cfg["train"]["seed"]), arch_from_dict(cfg["arch"]),
                      data_from_dict(cfg["data"]), len(classes) if classes else None, cfg,
                      c.get_run(record.run_id).data.tags.get("variant"))


def load_weights(c, run: TrainedRun) -> ResNet:
    """The run's final net (model.pt), in eval mode."""
    with tempfile.TemporaryDirectory() as tmp:
        state = torch.load(_download(c, run.run_id, "model.pt", tmp), map_location="cpu", weights_only=True)
    net = ResNet(run.arch, num_classes=run.num_classes)
    net.load_state_dict(state, strict=True)
    return net.eval()


class DataCache:
    """Each distinct data config loaded once per process (on the CPU)."""

    def __init__(self) -> None:
        self._loaded: dict[str, object] = {}

    def get(self, cfg: DataConfig):
        key = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
        if key not in self._loaded:
            data = load_dataset(cfg, "cpu")
            if not hasattr(data, "normalize") or not hasattr(data.test, "images"):
                raise ConfigError(f"dataset {cfg.name!r} is streamed (too large to hold); the analyses "
                                  "need an in-memory dataset (CIFAR-sized)")
            self._loaded[key] = data
        return self._loaded[key]


SAMPLE_SEED = 0  # the same images for every run, so twins and seeds are compared on the same ones


def images(data, split: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images of a split drawn at random (fixed by SAMPLE_SEED, not by the run), normalised
    as in training, unaugmented: (N, 3, H, W), (N,). Not the first n: an ImageFolder's images
    are stored class by class, so the first 500 test images would be two or three classes."""
    s = getattr(data, split)
    n = len(s) if n is None else min(n, len(s))
    idx = torch.randperm(len(s), generator=torch.Generator().manual_seed(SAMPLE_SEED))[:n]
    return data.normalize(s.images[idx]), s.labels[idx]


@torch.no_grad()
def loss_and_error(net: nn.Module, x: torch.Tensor, y: torch.Tensor, forward=None,
                   batch: int = EVAL_BATCH) -> tuple[float, float]:
    """(mean cross-entropy, error) of `net` (or `forward(x)`) on (x, y), as the net is (eval mode
    unless the caller set otherwise)."""
    forward = forward or net
    loss = wrong = 0.0
    for i in range(0, len(y), batch):
        out = forward(x[i:i + batch])
        loss += float(F.cross_entropy(out, y[i:i + batch], reduction="sum"))
        wrong += float((out.argmax(1) != y[i:i + batch]).sum())
    return loss / len(y), wrong / len(y)


@torch.no_grad()
def calibrate_bn(net: nn.Module, x: torch.Tensor, batch: int = EVAL_BATCH) -> nn.Module:
    """Running BN statistics of `net` set to the exact average over `x` (a freshly initialised
    net's are 0/1, which is no normalisation at all); returns the net in eval mode."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    net.train()
    for i in range(0, len(x), batch):
        net(x[i:i + batch])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return net.eval()
