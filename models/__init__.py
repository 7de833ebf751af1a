"""Plain and residual networks of He et al. 2016a/b, all built by one block factory.

    import models
    net = models.build("resnet56", shortcut="B")
    models.list_models("plain*")
    models.describe("resnet110")

The package exports what needs no torch (the spec and the registry), so `ablate models` and the
command-line parser start at once; the modules (models.network: `ResNet`, the weight-key
mappings; models.blocks: the block factory; models.complexity) are imported where they are used.
"""
from __future__ import annotations

from .registry import build, describe, list_models, register_model, resolve
from .spec import ArchSpec, ConfigError

__all__ = ["ArchSpec", "ConfigError", "build", "describe", "list_models", "register_model", "resolve"]
