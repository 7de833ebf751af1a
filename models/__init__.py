"""Plain and residual networks of He et al. 2016a/b, all built by one block factory.

    import models
    net = models.build("resnet56", shortcut="B")
    models.list_models("plain*")
    models.describe("resnet110")
"""
from .blocks import Block, PadShortcut, Projection
from .complexity import Complexity, complexity
from .network import ResNet, from_torchvision_state_dict
from .registry import build, describe, list_models, register_model, resolve
from .spec import ArchSpec, ConfigError

__all__ = ["ArchSpec", "Block", "Complexity", "ConfigError", "PadShortcut", "Projection", "ResNet",
           "build", "complexity", "describe", "from_torchvision_state_dict", "list_models",
           "register_model", "resolve"]
