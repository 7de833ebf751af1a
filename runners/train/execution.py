"""How a run executes on its device, as opposed to what it computes: the device, threads and
determinism, the precision (true fp32, TF32, or bf16 autocast around the network's body), the
memory format, compilation, and waiting for the device's queue."""
from __future__ import annotations

import contextlib
import os
from typing import Callable

import torch
from torch import nn

from models.network import ResNet

from ..errors import ConfigError
from .config import TrainConfig

EVAL_BATCH = {"cpu": 250, "cuda": 1000}  # the default eval_batch_size per device type (README)


def resolve_device(name: str) -> torch.device:
    """auto (CUDA if available, else CPU), cpu, cuda or cuda:N; ConfigError if unavailable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name} requested but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return dev


# cuBLAS reads this at its first call: a process that may train deterministically on CUDA sets it
# before then (runners/cli.py main does, for every command); setting it later has no effect.
CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextlib.contextmanager
def runtime(cfg: TrainConfig, device: torch.device):
    """Threads, determinism and TF32 for the duration of a run; the process's settings are restored.

    TF32 (10-bit mantissa matmuls and convolutions on Ampere and later) only for precision tf32:
    torch allows it for cuDNN convolutions by default, which is not the papers' fp32."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    det_warn, bench = torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark
    fill = _fill_uninitialized()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.precision == "tf32"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault(*CUBLAS_WORKSPACE)  # in time only if CUDA has not run cuBLAS yet
        # The head pools with a mean (AdaptiveAvgPool2d has no deterministic CUDA backward). Should
        # some op of a future torch lack a deterministic CUDA kernel, warn rather than stop a long
        # GPU run; on CPU every op is deterministic and resumes are bit-exact (tested).
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
        # Deterministic mode also NaN-fills every torch.empty by default: a kernel per allocation
        # that buys nothing here (every buffer the trainer reads is written first).
        _fill_uninitialized(False)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        torch.backends.cudnn.benchmark = bench
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        _fill_uninitialized(fill)


def _fill_uninitialized(value: bool | None = None) -> bool | None:
    """torch.utils.deterministic.fill_uninitialized_memory (torch >= 2.1): read, or set if given."""
    det = getattr(torch.utils, "deterministic", None)
    if det is None or not hasattr(det, "fill_uninitialized_memory"):
        return None
    if value is not None:
        det.fill_uninitialized_memory = value
    return det.fill_uninitialized_memory


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast: for precision bf16 only (an opt-in: the default is the papers' fp32), on CPU
    too (slower there: README, Performance); ConfigError on a GPU without bf16."""
    if cfg.precision != "bf16":
        return False
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision bf16: {device} does not support bf16; use fp32 or tf32")
    return True


def precision_on(cfg: TrainConfig, device: torch.device) -> str:
    """The precision a run computes in on `device`: tf32 is fp32 on a CPU (TF32 is a GPU format)."""
    return "fp32" if cfg.precision == "tf32" and device.type != "cuda" else cfg.precision


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def eval_batch_size(cfg: TrainConfig, device: torch.device) -> int:
    return cfg.eval_batch_size or EVAL_BATCH.get(device.type, EVAL_BATCH["cpu"])


class MixedPrecision(nn.Module):
    """The network's body under bf16 autocast (when `amp`: precision bf16), its head (pooling and
    the linear classifier) in fp32: logits and losses then carry no bf16 rounding, so bf16 and
    fp32 runs are compared on the same footing. Returns fp32 logits (N, classes)."""

    def __init__(self, model: ResNet, amp: bool) -> None:
        super().__init__()
        self.model, self.amp = model, amp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            features = m.stages(m.stem(x))  # (N, C, H', W')
        return m.head(features.float())


def compile_forward(net: nn.Module, mode: str = "default", backend: str | Callable = "inductor") -> nn.Module:
    """torch.compile `net` for one run. Dynamo's code cache is per process and keyed on the code
    object (ResNet.forward and the blocks' forwards are one code object for every architecture),
    so a study worker's 9th architecture would hit the recompile limit and silently run eager:
    reset it first. dynamic=False: the batch shape is fixed (the last partial batch is dropped)."""
    torch.compiler.reset()
    if backend != "inductor":  # modes are inductor's
        return torch.compile(net, dynamic=False, backend=backend)
    return torch.compile(net, dynamic=False, mode=None if mode == "default" else mode)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings must not stop before the kernels do)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
