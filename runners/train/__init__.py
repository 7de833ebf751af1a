"""Training one network: the typed recipe and data configs, the on-device data, the trainer.

    from runners.train import DataConfig, TrainConfig, load_dataset, resolve_device, train

Names are resolved on first use, so reading a config (`runners.train.config`) imports no torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "DataConfig": ".config", "TrainConfig": ".config",
    "Dataset": ".data", "load_dataset": ".data",
    "TrainResult": ".trainer", "resolve_device": ".trainer", "train": ".trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'runners.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
