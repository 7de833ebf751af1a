"""One field, one edit: a field declared on the architecture spec reaches `ablate train --help`,
a study's grid, the run's tags, params and name, and the blocks, with no other edit."""
from dataclasses import dataclass

import pytest
import torch

from models.fields import option
from models.network import ResNet
from models.spec import ArchSpec, ConfigError
from runners.cli import build_parser
from runners.commands.fields import field_values
from runners.study.spec import parse_spec
from runners.tracking.naming import axis_tags, label, run_params, variant_name
from runners.train.config import CONFIG_CLASSES, DataConfig, TrainConfig
from runners.train.config import assemble


@dataclass(frozen=True)
class WithGateGroups(ArchSpec):
    """A copy of the spec with one more shortcut field, declared as every field is."""

    gate_groups: int = option(1, "shortcut=gate: channels that share one gate (a test-only field)",
                              tag="used", group="shortcut", kinds=("gate", "shortcut-gate"), low=1)


@pytest.fixture
def extended(monkeypatch):
    monkeypatch.setitem(CONFIG_CLASSES, "arch", WithGateGroups)
    return WithGateGroups


def test_a_new_field_reaches_the_flags_the_grid_the_tags_and_the_layer(extended):
    parser = build_parser("train")
    help_text = " ".join(_help(parser).split())
    assert "--gate-groups N" in help_text and "channels that share one gate" in help_text

    # ablate train: the flag sets the field, on a registered model's spec too
    args = parser.parse_args(["train", "resnet8", "--shortcut", "gate", "--gate-groups", "4", "--dataset", "synthetic"])
    job = assemble(args.model, {s: field_values(args, s, cls) for s, cls in CONFIG_CLASSES.items()}, args.set)
    assert isinstance(job.arch, WithGateGroups) and job.arch.gate_groups == 4

    # a study's grid sweeps it, typed and validated from the declaration
    spec = parse_spec({"name": "g", "dataset": "synthetic",
                       "model": {"depth": 8, "shortcut": "gate", "gate_groups": [1, 2]}}, "g.yaml")
    archs = [v.arch for v in spec.variants]
    assert [a.gate_groups for a in archs] == [1, 2] and len({v.key for v in spec.variants}) == 2
    for bad, message in (("two", "gate_groups must be an int"), (0, "gate_groups must be a number >= 1")):
        with pytest.raises(ConfigError, match=message):
            parse_spec({"name": "g", "dataset": "synthetic", "model": {"depth": 8, "shortcut": "gate",
                                                                         "gate_groups": bad}}, "g.yaml")
    with pytest.raises(ConfigError, match="gate_groups applies to shortcut gate, shortcut-gate"):
        parse_spec({"name": "g", "dataset": "synthetic", "model": {"depth": 8, "shortcut": "A",
                                                                     "gate_groups": 2}}, "g.yaml")

    # the run's tags, params, name and label
    arch = archs[1]
    assert axis_tags(arch, 0)["gate_groups"] == "2"
    assert run_params(arch, TrainConfig(), DataConfig())["gate_groups"] == "2"
    assert "gate_groups2" in variant_name(arch) and "gate_groups=2" in label(arch)

    # the layer: every block's shortcut is built from a config that carries it
    with torch.device("meta"):
        net = ResNet(arch)
    assert {b.shortcut_config.gate_groups for b in net.blocks()} == {2}


def _help(parser) -> str:
    sub = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001 - argparse keeps subparsers here
    return sub.choices["train"].format_help()
