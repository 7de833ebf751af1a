"""A run's checkpoint: what identifies the run (its signature), the atomic write, the careful
read (a damaged file is set aside, never trusted), and the augmentation generator's state."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import torch

from models.spec import ArchSpec

from ..errors import ConfigError
from ..files import atomic_write, stale_temporaries
from .config import DataConfig, TrainConfig

_log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1
# Fields that change how a run executes, not what it computes: they may differ on resume and do
# not enter the default checkpoint directory's hash.
RUNTIME_FIELDS = ("device", "threads", "compile", "compile_mode", "eval_batch_size", "probe",
                  "deterministic", "precision", "channels_last", "workers")


def config_signature(arch: ArchSpec, cfg: TrainConfig, data_cfg: DataConfig) -> dict:
    """What a run computes: must match to resume; hashed into the CLI's default checkpoint dir."""
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_FIELDS}
    train["milestones"] = list(cfg.milestones) if cfg.milestones is not None else None
    return {"arch": arch.as_dict(), "train": train, "data": dataclasses.asdict(data_cfg)}


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically and durably: a crash leaves the previous checkpoint or the new one, never
    half of one; a write that fails (a full disk) removes its temporary file and raises."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint at `path` (tensors on the CPU), or None; weights_only, so no pickle code runs.

    A checkpoint that cannot be used (truncated, garbled, of another format version) is moved
    aside, kept for inspection and named in a warning, and None is returned: its run starts over
    rather than stopping.
    """
    # A temporary file here is a write that died with its process (a kill -9 mid-write): this
    # cell's directory belongs to one attempt at a time, so nothing is writing it now.
    for tmp in stale_temporaries(path):
        tmp.unlink(missing_ok=True)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        why = None if isinstance(state, dict) and state.get("version") == CHECKPOINT_VERSION else \
            f"format version {state.get('version') if isinstance(state, dict) else '?'}, expected {CHECKPOINT_VERSION}"
    except Exception as e:  # noqa: BLE001 - any unreadable file is handled the same way
        why = type(e).__name__
    if why is None:
        return state
    set_aside(path, "unreadable", f"cannot be read ({why})")
    return None


def set_aside(path: Path, kind: str, why: str) -> Path:
    """Move a checkpoint that will not be resumed to `<name>.<kind>-<time>-<pid>`, kept for
    inspection and named in a warning: its run starts from scratch."""
    aside = path.with_name(f"{path.name}.{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    _log.warning("checkpoint %s %s; kept as %s, starting this run from scratch", path, why, aside)
    return aside


def signature_difference(saved: dict, current: dict) -> str | None:
    """The first field in which two runs' signatures differ (`part.key: a there, b here`), or None."""
    for part in ("arch", "train", "data"):
        for key in sorted(set(saved.get(part, {})) | set(current[part])):
            a, b = saved.get(part, {}).get(key), current[part].get(key)
            if a != b:
                return f"{part}.{key}: {a!r} there, {b!r} here"
    return None


def check_signature(path: Path, saved: dict, current: dict) -> None:
    difference = signature_difference(saved, current)
    if difference is not None:
        raise ConfigError(f"checkpoint {path} is of another run ({difference}); discard it with "
                          "`ablate train ... --fresh`, or give another --checkpoint-dir")


def reseed(gen: torch.Generator, seed: int, epoch: int) -> torch.Generator:
    """The augmentation generator of a run resumed after `epoch` on another device type: a CPU
    generator's state (5,056 bytes) does not fit a CUDA one (16 bytes) nor the reverse, and the
    two draw different streams anyway. Reseeding from (seed, epoch) keeps the resume
    deterministic (the same checkpoint resumes the same way), though no longer identical to an
    uninterrupted run on either device."""
    return gen.manual_seed(seed * 2**20 + epoch)


def generator_state(gen: torch.Generator) -> dict:
    return {"device": gen.device.type, "state": gen.get_state()}


def restore_generator(gen: torch.Generator, saved: dict | torch.Tensor, seed: int, epoch: int) -> bool:
    """Restore `gen` from generator_state(); True if restored exactly, False if reseeded."""
    if isinstance(saved, dict):
        kind, state = saved["device"], saved["state"]
    else:  # a bare state, from before the device type was saved: the state's size tells
        kind, state = (gen.device.type if saved.numel() == gen.get_state().numel() else "other"), saved
    if kind != gen.device.type:
        reseed(gen, seed, epoch)
        return False
    gen.set_state(state)
    return True
