"""Plain and residual networks of He et al. 2016a/b, all built by one block factory.

    import models
    net = models.build("resnet56", shortcut="B")
    models.list_models("plain*")
    models.describe("resnet110")

Names are resolved on first use (PEP 562), so `from models.spec import ConfigError` and the
command-line parser do not pay for importing torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ArchSpec": ".spec", "ConfigError": ".spec",
    "Block": ".blocks", "PadShortcut": ".blocks", "Projection": ".blocks",
    "GhostBatchNorm2d": ".blocks", "ScaledSum": ".blocks", "GatedSum": ".blocks",
    "DroppedShortcutSum": ".blocks",
    "Complexity": ".complexity", "complexity": ".complexity",
    "ResNet": ".network", "from_torchvision_state_dict": ".network",
    "from_akamaster_state_dict": ".network",
    "build": ".registry", "describe": ".registry", "list_models": ".registry",
    "register_model": ".registry", "resolve": ".registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
