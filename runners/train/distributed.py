"""One training run on several processes (GPUs or nodes) through torch.distributed.

    ablate train resnet50 --dataset /data/imagenet --nproc-per-node 8    # relaunches itself
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m runners.cli train resnet50 --dataset /data/imagenet            # several nodes

torchrun-compatible: the process group is read from the environment it sets (env:// rendezvous:
RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT), NCCL on CUDA and gloo on CPU.
`train.batch_size` is the global batch: each of the w processes takes batch/w (an error if it does
not divide), so a recipe means the same on 1 GPU or 64. Only rank 0 writes the checkpoint, talks
to MLflow and Optuna, and prints; every rank reads the checkpoint when it starts, so a run that
lost a process or a node resumes from its last epoch when it is started again (torchrun's
--max-restarts does that within one launch).

The launch for `ablate run`/`ablate worker` (a spec's `resources.gpus_per_trial`) is `launch`:
the worker runs under torch.distributed.run with the same arguments; rank 0 claims the trial
and sends it to the others with `broadcast_object`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Context:
    """This process's place in the run; the default is the single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched() -> bool:
    """Whether this process was started by torchrun (or another env:// launcher)."""
    return all(k in os.environ for k in ENV)


def current() -> Context:
    """The context of the initialised process group, or the single-process one."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                   int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def init(device: torch.device) -> Context:
    """Join the process group torchrun describes (if any): NCCL for CUDA, gloo for the CPU.

    On CUDA the local rank picks the GPU, so `cuda` means this process's GPU from here on; on
    the CPU the cores are shared among the node's processes (set before the first op).
    """
    if not launched() or int(os.environ["WORLD_SIZE"]) == 1:
        return Context()
    if not dist.is_initialized():
        local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return current()


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_batch(global_batch: int, world: int) -> int:
    """Each process's share of the global batch; ConfigError unless it divides evenly."""
    if global_batch % world:
        raise ConfigError(f"train.batch_size {global_batch} is the global batch and must divide evenly "
                          f"among the {world} processes; use a multiple of {world}")
    return global_batch // world


def wrap(model: nn.Module, ctx: Context, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """The module the training steps run through: `model` itself, or DDP around it.

    SyncBatchNorm replaces the BN modules in place (it keeps their parameters and buffers, so an
    optimizer built on `model` still holds the right tensors); `model` stays the bare network
    for evaluation, probing and checkpoints.
    """
    if not ctx.distributed:
        return model
    if sync_bn:
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if converted is not model:
            raise ConfigError("train.sync_bn: the network itself is a BatchNorm layer")
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_sum(values: torch.Tensor, ctx: Context) -> torch.Tensor:
    """`values` summed over the ranks (a copy; the input is unchanged)."""
    if not ctx.distributed:
        return values
    out = values.clone()
    dist.all_reduce(out)
    return out


def sync_buffers(model: nn.Module, ctx: Context) -> None:
    """Rank 0's buffers (BN running statistics) on every rank. DDP sends them before each
    forward, so after the last step every rank holds its own; evaluation shards and the
    checkpoint (rank 0's) must see the same ones."""
    if not ctx.distributed:
        return
    for b in model.buffers():
        dist.broadcast(b, src=0)


def broadcast_object(obj, ctx: Context, src: int = 0):
    """`obj` of rank `src` on every rank (picklable objects: a claimed trial, a decision)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def launch(nproc: int, argv: list[str], *, nnodes: int = 1) -> int:
    """Run `python -m runners.cli ARGV` as `nproc` processes under torch.distributed.run and
    return its exit status (143, 129 or 130 if this process was stopped by SIGTERM, SIGHUP or Ctrl-C).
    Single node: --standalone (a free port, a local c10d store); for several nodes use torchrun
    directly (see the README's multi-node recipe)."""
    if nproc < 1:
        raise ConfigError(f"--nproc-per-node must be positive, got {nproc}")
    env = dict(os.environ)
    # torchrun would force OMP_NUM_THREADS=1 (with a warning); on the CPU, share the cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}"]
    if nnodes == 1:
        cmd.append("--standalone")
    cmd += ["-m", "runners.cli", *argv]
    proc = subprocess.Popen(cmd, env=env)
    stopped: list[int] = []

    def stop(signum, frame):
        stopped.append(128 + signum)
        if signum != signal.SIGINT:  # Ctrl-C reaches torchrun from the terminal itself
            proc.send_signal(signal.SIGTERM)  # torchrun stops its processes; else they would outlive us

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        code = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return stopped[0] if stopped else code
