"""Parameters and multiply-accumulates (MACs) of a network, per module and in total.

MACs are counted by torch's own `FlopCounterMode` on the "meta" device: the forward pass runs on
shapes only, so ResNet-1202 or ResNet-152 at 224x224 is counted in milliseconds, with no memory,
and the count cannot drift from the module code the way a hand-written mirror of each
`__init__` can. Convolutions and linear layers are counted (BN, ReLU, pooling and additions are
not), which is the convention of torchvision's published GFLOPS (resnet50: 4.09, really
multiply-adds) and of the ResNet paper.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int
    input_size: int
    rows: list[dict] = field(default_factory=list)  # per top-level part and stage

    def as_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "input_size": self.input_size}


def complexity(model: nn.Module, input_size: int | None = None) -> Complexity:
    """Count `model`'s parameters and MACs for one image of `input_size` x `input_size`."""
    if input_size is None:
        input_size = model.spec.input_size
    params = sum(p.numel() for p in model.parameters())
    meta = model if _on_meta(model) else copy.deepcopy(model).to("meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        meta(torch.empty(1, 3, input_size, input_size, device="meta"))
    per_module = counter.get_flop_counts()
    prefix = type(model).__name__  # FlopCounterMode names modules "<Class>.<path>"
    rows = []
    for name, child in _parts(model):
        flops = sum(per_module.get(f"{prefix}.{name}", {}).values())
        rows.append({"module": name, "params": sum(p.numel() for p in child.parameters()),
                     "macs": flops // 2})
    total_flops = sum(per_module.get("Global", {}).values())
    # FlopCounterMode counts a multiply-add as 2 FLOPs.
    return Complexity(params=params, macs=total_flops // 2, input_size=input_size, rows=rows)


def _on_meta(model: nn.Module) -> bool:
    return all(p.device.type == "meta" for p in model.parameters())


def _parts(model: nn.Module):
    """Top-level parts, with the stages of a ResNet split out, for the complexity table."""
    for name, child in model.named_children():
        if name == "stages":
            for i, stage in enumerate(child):
                yield f"stages.{i}", stage
        else:
            yield name, child
