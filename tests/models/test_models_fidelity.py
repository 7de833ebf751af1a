"""He 2016b's variants: Table 1 shortcuts, Fig. 4 orders, the 1-layer skip, the pre-activation
first unit, option A's pad placement (akamaster checkpoints) and ghost batch norm."""
import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models import ArchSpec, ConfigError
from models.blocks import Block, DroppedShortcutSum, GhostBatchNorm2d, PadShortcut, Projection
from models.network import from_akamaster_state_dict
from models.spec import ShortcutConfig

NEW_SHORTCUTS = ["scale", "gate", "shortcut-gate", "dropout"]
ORDERS = ["post", "bn-after-add", "relu-before-add", "relu-preact", "preact"]

# Exact parameter counts, each one field away from resnet110 (basic, A: 1,727,962) or resnet164
# (bottleneck, B: 1,704,154). Reasoning:
#  - scale, dropout: no parameters; at 164 the three B projections become option-A pads (-42,880).
#  - gate, shortcut-gate: a 1x1 conv + bias (in*out + out) on each of the 54 units: +96,224 at 110
#    (option C's conv + BN per unit, minus one per output channel: 98,240 - 2,016); at 164
#    +1,512,320 - 42,880.
#  - orders b, c, d: the same modules as a. e: BN before each conv instead of after (and no BN in
#    the projections), -896 at 164, none at 110 where every conv keeps its width.
#  - single at 110: 108 one-conv units hold exactly the 108 convs of 54 two-conv units.
PARAMS = {
    ("resnet110", "shortcut", "scale"): 1_727_962,
    ("resnet110", "shortcut", "gate"): 1_824_186,
    ("resnet110", "shortcut", "shortcut-gate"): 1_824_186,
    ("resnet110", "shortcut", "dropout"): 1_727_962,
    ("resnet110", "shortcut", "C"): 1_826_202,
    ("resnet110", "order", "bn-after-add"): 1_727_962,
    ("resnet110", "order", "relu-before-add"): 1_727_962,
    ("resnet110", "order", "relu-preact"): 1_727_962,
    ("resnet110", "order", "preact"): 1_727_962,
    ("resnet110", "block", "single"): 1_727_962,
    ("resnet110", "pad", "split"): 1_727_962,
    ("resnet110", "bn_batch", 64): 1_727_962,
    ("resnet164", "shortcut", "scale"): 1_661_274,
    ("resnet164", "shortcut", "gate"): 3_173_594,
    ("resnet164", "shortcut", "shortcut-gate"): 3_173_594,
    ("resnet164", "shortcut", "dropout"): 1_661_274,
    ("resnet164", "shortcut", "C"): 3_181_658,
    ("resnet164", "order", "bn-after-add"): 1_704_154,
    ("resnet164", "order", "relu-before-add"): 1_704_154,
    ("resnet164", "order", "relu-preact"): 1_704_154,
    ("resnet164", "order", "preact"): 1_703_258,
    ("resnet164", "block", "single"): 2_605_658,  # 3n+2 = 164: 54 one-conv units per stage
    ("resnet164", "bn_batch", 64): 1_704_154,
}


@pytest.mark.parametrize("name,field,value", PARAMS)
def test_parameter_counts_of_every_variant(name, field, value):
    assert models.describe(name, **{field: value})["params"] == PARAMS[name, field, value]


def test_gate_adds_a_1x1_conv_and_bias_per_unit():
    with torch.device("meta"):
        net = models.build("resnet110", shortcut="gate")
    units = [(b.conv1.in_channels, b.combine.conv.out_channels) for b in net.blocks()]
    assert len(units) == 54
    assert sum(ci * co + co for ci, co in units) == 96_224 == PARAMS["resnet110", "shortcut", "gate"] - 1_727_962


def test_preact_parameter_counts_after_the_first_unit_fix():
    # CIFAR: the BN(16) before the first unit moved into the stem, so the counts are unchanged.
    assert models.describe("preact-resnet110")["params"] == 1_727_962
    assert models.describe("preact-resnet164")["params"] == 1_703_258
    # ImageNet: the first block's BN(64) duplicated the stem's BN-ReLU and is gone (-128).
    assert models.describe("resnet18", preact=True)["params"] == 11_687_720
    assert models.describe("resnet50", preact=True)["params"] == 25_549_352


def _tiny(block):
    return {"basic": 8, "bottleneck": 11, "single": 5}[block]


@pytest.mark.parametrize("block,shortcut,order", list(itertools.product(
    ["basic", "bottleneck", "single"], ["none", "A", "B", "C"] + NEW_SHORTCUTS, ORDERS)))
def test_every_variant_builds_runs_backward_and_is_counted_on_meta(block, shortcut, order):
    spec = ArchSpec(depth=_tiny(block), block=block, shortcut=shortcut, order=order)
    torch.manual_seed(0)
    net = models.build(spec)
    y = net(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    # The MAC counter runs the net on the meta device (training mode: dropout draws its mask there).
    assert net.complexity().macs > 0


def test_pad_split_and_ghost_bn_build_and_run():
    net = models.build("resnet20", pad="split", bn_batch=2, shortcut="gate", order="relu-preact")
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(isinstance(m, GhostBatchNorm2d) for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert net.complexity().params == models.describe("resnet20", shortcut="gate")["params"]


@pytest.mark.parametrize("field,value", [("shortcut", k) for k in NEW_SHORTCUTS + ["C"]] +
                         [("order", o) for o in ORDERS[1:]] + [("pad", "split"), ("bn_batch", 8)])
@pytest.mark.parametrize("block", ["basic", "bottleneck", "single"])
def test_plain_and_each_variant_differ_in_one_field_and_share_common_parameters(field, value, block):
    base = ArchSpec(depth=_tiny(block), block=block, shortcut="A")
    variant = base.replace(**{field: value})
    if field != "shortcut":  # the plain twin of the variant
        plain = variant.replace(shortcut="none")
    else:
        plain = base.replace(shortcut="none")
    differ = [f.name for f in dataclasses.fields(ArchSpec) if getattr(plain, f.name) != getattr(variant, f.name)]
    assert differ == ["shortcut"]
    with torch.device("meta"):
        p_sd, v_sd = models.build(plain).state_dict(), models.build(variant).state_dict()
    common = set(p_sd) & set(v_sd)
    assert set(p_sd) == common  # the plain net has nothing the residual one lacks ...
    assert all(p_sd[k].shape == v_sd[k].shape for k in common)
    # ... and the residual one adds only shortcut and combining modules.
    assert all(".shortcut." in k or ".combine." in k for k in set(v_sd) - common)


@pytest.mark.parametrize("kind", ["gate", "shortcut-gate"])
def test_gate_starts_at_its_bias(kind):
    net = models.build("resnet20", shortcut=kind, gate_bias=-6)
    gates = [b.combine for b in net.blocks()]
    assert all(torch.equal(g.conv.bias, torch.full_like(g.conv.bias, -6.0)) for g in gates)
    g = gates[0].gate(torch.zeros(1, 16, 8, 8))
    torch.testing.assert_close(g, torch.full_like(g, torch.sigmoid(torch.tensor(-6.0)).item()))
    net.reset_parameters()  # re-initialising keeps b_g
    assert all(torch.equal(g.conv.bias, torch.full_like(g.conv.bias, -6.0)) for g in gates)
    # At b_g = 0 "the expectation of 1 - g(x) is 0.5" (He 2016b Sec. 3.1): W_g is He-initialised.
    torch.manual_seed(0)
    zero = models.build("resnet20", shortcut=kind, gate_bias=0).blocks()[1].combine
    assert zero.gate(torch.relu(torch.randn(8, 16, 8, 8))).mean().item() == pytest.approx(0.5, abs=0.05)


def _random_bn(module: nn.Module, shift: float) -> nn.Module:
    """Every BN of `module` with random statistics and affine terms, in eval mode: identity BNs
    would hide where a BN sits."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-shift, shift)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-shift, shift)
    return module.eval()


def _eval_block(shortcut: str, order: str, **options):
    torch.manual_seed(0)
    return _random_bn(Block("basic", 4, 4, shortcut=ShortcutConfig.of(shortcut, **options), order=order), 0.5)


@pytest.mark.parametrize("order", ORDERS)
def test_activation_orders_are_fig4(order):
    b = _eval_block(shortcut="A", order=order)
    c1, c2, r = b.conv1, b.conv2, torch.relu
    x = torch.randn(2, 4, 6, 6)
    expected = {
        "post": lambda: r(b.bn2(c2(r(b.bn1(c1(x))))) + x),             # (a)
        "bn-after-add": lambda: r(b.bn2(c2(r(b.bn1(c1(x)))) + x)),     # (b)
        "relu-before-add": lambda: r(b.bn2(c2(r(b.bn1(c1(x)))))) + x,  # (c)
        "relu-preact": lambda: b.bn2(c2(r(b.bn1(c1(r(x)))))) + x,      # (d)
        "preact": lambda: c2(r(b.bn2(c1(r(b.bn1(x)))))) + x,           # (e)
    }[order]
    with torch.no_grad():
        torch.testing.assert_close(b(x.clone()), expected())


def test_shortcut_kinds_are_table1():
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        plain = _eval_block(shortcut="none", order="relu-before-add")  # F(x), no ReLU after it
        branch = plain(x)
        scaled = _eval_block(shortcut="scale", shortcut_scale=0.3, branch_scale=0.7, order="relu-before-add")
        torch.testing.assert_close(scaled(x), 0.7 * branch + 0.3 * x)
        for kind in ["gate", "shortcut-gate"]:
            gated = _eval_block(shortcut=kind, gate_bias=-2.0, order="relu-before-add")
            gated.load_state_dict(plain.state_dict(), strict=False)  # the same branch as `plain`
            g = torch.sigmoid(gated.combine.conv(x))
            torch.testing.assert_close(gated(x), (g if kind == "gate" else 1) * branch + (1 - g) * x)
        dropped = _eval_block(shortcut="dropout", shortcut_dropout=0.5, order="relu-before-add")
        torch.testing.assert_close(dropped(x), branch + 0.5 * x)  # eval: the expected scale 0.5
    drop = DroppedShortcutSum(0.5).train()
    kept = drop(torch.zeros(10_000), torch.ones(10_000), None)
    assert set(kept.unique().tolist()) == {0.0, 1.0} and kept.mean().item() == pytest.approx(0.5, abs=0.03)


def test_option_c_is_the_1x1_conv_shortcut_on_every_unit():
    net = models.build("resnet20", shortcut="C")
    assert all(isinstance(b.shortcut, Projection) and b.shortcut.conv.kernel_size == (1, 1)
               for b in net.blocks())


def test_one_layer_skip_depths():
    spec = models.resolve("resnet110", block="single")
    assert spec.stage_depths == (36, 36, 36) and spec.total_depth == 110
    with pytest.raises(ConfigError, match=r"depth must be 3n\+2 for single blocks \(nearest: 107, 110\), got 109"):
        models.resolve("resnet20", block="single", depth=109)


def test_preact_is_an_alias_of_order():
    assert ArchSpec(preact=True).order == "preact" and ArchSpec(order="preact").preact is True
    assert ArchSpec(order="relu-preact").preact is False and ArchSpec().order == "post"
    assert models.resolve("preact-resnet110") == models.resolve("resnet110", order="preact")
    assert models.resolve("preact-resnet110", preact=False).order == "post"
    assert models.resolve("preact-resnet110", order="relu-preact").preact is False
    with pytest.raises(ConfigError, match=r"preact=true contradicts order='relu-preact'"):
        ArchSpec(preact=True, order="relu-preact")


@pytest.mark.parametrize("overrides,message", [
    ({"order": "pre"}, r"order must be one of post, bn-after-add, relu-before-add, relu-preact, preact, got 'pre'"),
    ({"pad": "both"}, r"pad must be one of append, split, got 'both'"),
    ({"gate_bias": -3}, r"gate_bias applies to shortcut gate, shortcut-gate, not to shortcut='A'"),
    ({"shortcut": "B", "pad": "split"}, r"pad applies to shortcut A, scale, gate, shortcut-gate, dropout"),
    ({"shortcut": "dropout", "shortcut_dropout": 1}, r"shortcut_dropout must be a number in \[0, 1\), got 1"),
    ({"shortcut": "scale", "branch_scale": -1}, r"branch_scale must be a number in \[0, 100\], got -1"),
    ({"bn_batch": 0}, r"bn_batch must be a positive integer or null, got 0"),
    ({"shortcut": "D"}, r"got 'D'; He 2016b Table 1 adds scale, gate, shortcut-gate, dropout"),
])
def test_bad_variant_fields_say_what_is_valid(overrides, message):
    with pytest.raises(ConfigError, match=message):
        models.resolve("resnet20", **overrides)


def test_plain_net_ignores_shortcut_fields():
    assert models.resolve("plain20", gate_bias=-3, pad="split").shortcut == "none"


# -- the pre-activation first unit (He 2016b Sec. 4.1) ------------------------------------------
def _record_inputs(net, kinds):
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append((m, a[0].detach().clone())))
             for m in net.modules() if isinstance(m, kinds)]
    return seen, hooks


@pytest.mark.parametrize("spec", [
    ArchSpec(family="cifar", depth=14, preact=True),
    ArchSpec(family="cifar", depth=20, block="bottleneck", shortcut="B", preact=True),
    ArchSpec(family="imagenet", stages=(1, 1, 1, 1), depth=None, block="basic", shortcut="B", width=0.25, preact=True),
])
def test_preact_first_activation_is_after_conv1_before_the_split(spec):
    torch.manual_seed(0)
    net = models.build(spec)
    assert hasattr(net.stem, "bn") and hasattr(net.stem, "relu")
    first = net.stages[0][0]
    assert not hasattr(first, "bn1")  # the stem's BN-ReLU is this unit's pre-activation
    size = 32 if spec.family == "cifar" else 64
    seen, hooks = _record_inputs(net, (nn.BatchNorm2d, nn.Conv2d, nn.Identity, Projection, PadShortcut))
    stem_out = []
    hooks.append(net.stem.register_forward_hook(lambda m, a, out: stem_out.append(out.detach().clone())))
    net(torch.randn(2, 3, size, size))
    for h in hooks:
        h.remove()
    inputs = {m: x for m, x in seen}
    # The first unit's shortcut and branch read the same, activated tensor: the stem's output.
    torch.testing.assert_close(inputs[first.shortcut], inputs[first.conv1])
    torch.testing.assert_close(inputs[first.conv1], stem_out[0])
    assert stem_out[0].min() >= 0
    # Every later stage's first unit shares one BN-ReLU between its branch and its shortcut.
    for stage in net.stages[1:]:
        unit = stage[0]
        torch.testing.assert_close(inputs[unit.shortcut], inputs[unit.conv1])
        torch.testing.assert_close(inputs[unit.conv1], torch.relu(unit.bn1(inputs[unit.bn1])))
    # No two consecutive BN-ReLUs: no BN normalises an already activated (non-negative) tensor.
    bns = [(m, x) for m, x in seen if isinstance(m, nn.BatchNorm2d)]
    assert all(x.min() < 0 for m, x in bns)


# -- option A's pad placement and akamaster's checkpoints ------------------------------------------
class AkaBasicBlock(nn.Module):
    """akamaster/pytorch_resnet_cifar10's BasicBlock with option A, re-implemented for the test."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.planes, self.downsample = planes, stride != 1 or in_planes != planes

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        q = self.planes // 4
        out = out + (F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, q, q)) if self.downsample else x)
        return F.relu(out)


class AkaResNet(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for i, planes in enumerate([16, 32, 64], start=1):
            blocks = []
            for j in range(n):
                blocks.append(AkaBasicBlock(in_planes, planes, 2 if i > 1 and j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3]).flatten(1)
        return self.linear(out)


@pytest.mark.parametrize("depth", [20, 56])
def test_akamaster_checkpoint_round_trip(depth):
    torch.manual_seed(0)
    ref = _random_bn(AkaResNet((depth - 2) // 6), 0.2)
    # Their checkpoints hold {"state_dict": ...} saved from nn.DataParallel ("module." keys).
    checkpoint = {"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "best_prec1": 0.0}
    ours = models.build(f"resnet{depth}", pad="split").eval()
    ours.load_state_dict(from_akamaster_state_dict(checkpoint), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
        appended = models.build(f"resnet{depth}").eval()
        appended.load_state_dict(from_akamaster_state_dict(ref.state_dict()), strict=True)
        assert not torch.allclose(appended(x), ref(x), atol=1e-3)  # the placement matters


def test_pad_split_places_zero_channels_on_both_sides():
    x = torch.randn(1, 16, 8, 8)
    y = PadShortcut(16, 32, stride=2, pad="split")(x)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


# -- ghost batch norm --------------------------------------------------------------------------
def test_ghost_bn_equals_separate_bn_passes_on_each_sub_batch():
    torch.manual_seed(0)
    ghost = GhostBatchNorm2d(5, bn_batch=4)
    ghost.weight.data.uniform_(0.5, 1.5)
    ghost.bias.data.uniform_(-0.5, 0.5)
    halves = [nn.BatchNorm2d(5), nn.BatchNorm2d(5)]
    for bn in halves:
        bn.load_state_dict(ghost.state_dict())
    x = torch.randn(8, 5, 3, 3) * 2 + 1
    torch.testing.assert_close(ghost(x), torch.cat([halves[0](x[:4]), halves[1](x[4:])]))
    # One running-stat update per step, with the sub-batches' statistics averaged.
    torch.testing.assert_close(ghost.running_mean, (halves[0].running_mean + halves[1].running_mean) / 2)
    torch.testing.assert_close(ghost.running_var, (halves[0].running_var + halves[1].running_var) / 2)
    assert ghost.num_batches_tracked.item() == 1
    ghost.eval(), halves[0].eval()
    halves[0].load_state_dict(ghost.state_dict())
    torch.testing.assert_close(ghost(x), halves[0](x))  # eval: ordinary BN
