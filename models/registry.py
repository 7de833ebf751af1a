"""Names <-> architecture specs, in the style of timm's registry.

    build("resnet56", shortcut="B", preact=True, width=2)
    list_models("plain*")
    describe("resnet110")

Registered names are data (an `ArchSpec` preset each). Unregistered CIFAR names that follow the
grammar `[preact-](resnet|plain)<depth>` also resolve, so `resnet26` works and `resnet21` explains
why it does not.

This module imports torch only to build or measure a network: listing and resolving names, and
describing a registered preset (whose size is read from the golden file `complexity.json`,
checked against the live count by the tests), stay instant.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import re
from pathlib import Path

from .spec import IMAGENET_DEPTHS, ArchSpec, ConfigError

_REGISTRY: dict[str, ArchSpec] = {}
_NAME_GRAMMAR = re.compile(r"^(?P<preact>preact-)?(?P<kind>resnet|plain)(?P<depth>\d+)$")
GOLDEN = Path(__file__).with_name("complexity.json")


def register_model(name: str, spec: ArchSpec) -> ArchSpec:
    """Register `spec` under `name`.

    Re-registering a name raises: silently replacing a preset would change every study using it.
    """
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = spec.validate()
    return spec


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_models(pattern: str = "*", exclude: str | None = None) -> list[str]:
    """Registered names matching the fnmatch `pattern` (and not `exclude`), in natural order."""
    names = [n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)]
    if exclude:
        names = [n for n in names if not fnmatch.fnmatchcase(n, exclude)]
    return sorted(names, key=_natural_key)


def resolve(name: str, **overrides) -> ArchSpec:
    """The validated spec of `name` with `overrides` applied (None values are ignored)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if name in _REGISTRY:
        spec = _REGISTRY[name]
    else:
        m = _NAME_GRAMMAR.match(name)
        if not m:
            close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
            hint = f"closest: {', '.join(close)}" if close else "run `ablate models` to list them"
            raise ConfigError(f"unknown model {name!r}; {hint}")
        # Unregistered depths of the grammar are CIFAR basic-block nets with option A.
        spec = ArchSpec(family="cifar", depth=int(m["depth"]),
                        shortcut="none" if m["kind"] == "plain" else "A", preact=bool(m["preact"]))
    return spec.replace(**overrides) if overrides else spec.validate()


def build(name: str | ArchSpec, num_classes: int | None = None, **overrides):
    """Build a registered model (or an `ArchSpec`) with fields overridden: a `ResNet`.

    num_classes defaults to the family's (cifar 10, imagenet 1000, seed 2).
    """
    from .network import ResNet
    spec = name.replace(**overrides) if isinstance(name, ArchSpec) else resolve(name, **overrides)
    model = ResNet(spec, num_classes)
    model.model_name = name if isinstance(name, str) else None
    return model


def describe(model, **overrides) -> dict:
    """Name, architecture axes, parameters and MACs at the family's input size.

    `model` is a name or a built network. A registered name without overrides is read from the
    golden file; anything else is measured (on the meta device: shapes only, no memory).
    """
    if isinstance(model, str):
        name, spec = model, resolve(model, **overrides)
        size = _golden().get(name) if name in _REGISTRY and not overrides else None
        if size is None:
            size = measure(spec)
    else:
        from .complexity import complexity
        name, spec = getattr(model, "model_name", None), model.spec
        size = complexity(model).as_dict()
    return {"name": name, "family": spec.family, "depth": spec.total_depth, "block": spec.block,
            "shortcut": spec.shortcut, "preact": spec.preact, "order": spec.order, "width": spec.width,
            "stages": list(spec.stage_depths), **size}


def measure(spec: ArchSpec) -> dict:
    """{"params", "macs", "input_size"} of `spec`, counted on a network built on the meta device."""
    import torch

    from .complexity import complexity
    from .network import ResNet
    with torch.device("meta"):
        return complexity(ResNet(spec)).as_dict()


# Fields that change how a net trains, not its weights or multiplies: a spec differing from a
# preset only in these has the preset's size.
SIZE_NEUTRAL = ("bn_batch", "zero_init_last", "gate_bias")


def preset_size(spec: ArchSpec) -> dict | None:
    """{"params", "macs", "input_size"} from the golden file when `spec` is a registered preset
    (up to SIZE_NEUTRAL fields); None otherwise (then `measure` it)."""
    defaults = {f.name: f.default for f in dataclasses.fields(ArchSpec) if f.name in SIZE_NEUTRAL}
    plain = spec.replace(**defaults)
    for name, preset in _REGISTRY.items():
        if preset.replace(**defaults) == plain:
            return _golden().get(name)
    return None


_GOLDEN_CACHE: dict | None = None


def _golden() -> dict:
    global _GOLDEN_CACHE
    if _GOLDEN_CACHE is None:
        _GOLDEN_CACHE = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    return _GOLDEN_CACHE


def write_golden() -> None:
    """Recount every registered preset into complexity.json (after changing a block or a preset):
    `python -c "from models.registry import write_golden; write_golden()"`."""
    GOLDEN.write_text(json.dumps({n: measure(s) for n, s in sorted(_REGISTRY.items())}, indent=1) + "\n")


# -- the presets -------------------------------------------------------------------------------
# He 2016a Sec. 4.2 / Table 6: CIFAR nets with option A, and their plain twins.
for _d in (20, 32, 44, 56, 110, 1202):
    register_model(f"resnet{_d}", ArchSpec(family="cifar", depth=_d, shortcut="A"))
    register_model(f"plain{_d}", ArchSpec(family="cifar", depth=_d, shortcut="none"))
# He 2016b Table 1/2: pre-activation CIFAR nets; 164 and 1001 are bottleneck nets, striding in the
# first 1x1 as KaimingHe/resnet-1k-layers does (the field's default).
for _d in (20, 32, 44, 56, 110):
    register_model(f"preact-resnet{_d}", ArchSpec(family="cifar", depth=_d, shortcut="A", preact=True))
for _d in (164, 1001):
    register_model(f"resnet{_d}", ArchSpec(family="cifar", depth=_d, block="bottleneck", shortcut="B"))
    register_model(f"preact-resnet{_d}", ArchSpec(family="cifar", depth=_d, block="bottleneck",
                                                  shortcut="B", preact=True))
# He 2016a Table 1/3: ImageNet nets with option B, plain 18/34 (Fig. 4). The bottleneck presets
# are torchvision's v1.5 (stride in the 3x3), so that `build("resnet50")` is torchvision's
# resnet50, its weights load and its 4.09 GMACs hold; the paper's nets stride in the first 1x1
# (`bottleneck_stride="1x1"`, the field's default, 3.86 GMACs), which every paper spec uses.
for _d, (_block, _) in IMAGENET_DEPTHS.items():
    _stride = {"bottleneck_stride": "3x3"} if _block == "bottleneck" else {}
    register_model(f"resnet{_d}", ArchSpec(family="imagenet", depth=_d, block=_block, shortcut="B", **_stride))
for _d in (18, 34):
    register_model(f"plain{_d}", ArchSpec(family="imagenet", depth=_d, shortcut="none"))
# The tutorial this project started from (shared/seed/resnet-tutorial.md), bugs fixed:
#  1. the downsampling block's forward returned nothing; it now returns its output;
#  2. `x.size() is not out.size()` was always true, so every block projected its shortcut; a
#     projection now sits only where the shape changes (option B);
#  3. `out.view(self.batch_size, -1)` hard-coded the batch size; the head flattens instead;
#  4. `AvgPool2d(7, 1)` fixed the input at 224x224; the head pools adaptively;
#  5. there was no batch norm; every conv is followed by BN, and convs drop their bias;
#  6. a ReLU ended each branch before the addition and none followed it; the block is now the
#     paper's post-activation block.
# Its stage layout stays: stages [3, 4, 6, 3] of bottlenecks, downsampling at the end of stages
# 1-3 by a stride-2 first 1x1 conv (downsample="last"), 2 classes.
register_model("seed", ArchSpec(family="seed", depth=None, stages=(3, 4, 6, 3), block="bottleneck",
                                 shortcut="B", downsample="last"))
