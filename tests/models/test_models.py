"""The architectures are exactly the papers' and torchvision's, and every variant builds."""
import itertools
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

import models
from conftest import ablate
from models import ArchSpec, ConfigError
from models.blocks import PadShortcut
from models.network import from_torchvision_state_dict

# He 2016a Table 6 (0.27M .. 19.4M), exact counts of the option-A nets.
CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}


def _deep_is_slow(depth: int, *values):
    """The parameters of a case on a net of `depth` layers: in the slow tier from 1000 (seconds to build)."""
    return pytest.param(*values, marks=pytest.mark.slow if depth >= 1000 else ())


@pytest.mark.parametrize("depth,params", [_deep_is_slow(d, d, p) for d, p in CIFAR_PARAMS.items()])
def test_cifar_parameter_counts(depth, params):
    assert models.describe(f"resnet{depth}")["params"] == params
    assert models.describe(f"plain{depth}")["params"] == params  # option A adds no parameters
    # Option B adds a projection + BN at the two stage transitions: 16->32 and 32->64.
    assert models.describe(f"resnet{depth}", shortcut="B")["params"] == params + 2_752


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_imagenet_parameter_counts_match_torchvision(depth):
    with torch.device("meta"):
        ref = getattr(torchvision.models, f"resnet{depth}")()
    assert models.describe(f"resnet{depth}")["params"] == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_load_and_outputs_match(depth):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, f"resnet{depth}")().eval()
    # Randomise BN statistics too, so the comparison exercises every tensor.
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    ours = models.build(f"resnet{depth}").eval()  # the registered preset: v1.5 (bottleneck_stride 3x3)
    assert ours.spec.bottleneck_stride == ("3x3" if depth >= 50 else "1x1")
    ours.load_state_dict(from_torchvision_state_dict(ref.state_dict()), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


def test_macs_match_published_figures():
    # torchvision's published GFLOPS are multiply-adds: resnet18 1.81, resnet50 (v1.5) 4.09.
    assert models.describe("resnet18")["macs"] == pytest.approx(1.81e9, rel=0.01)
    assert models.describe("resnet50")["macs"] == pytest.approx(4.09e9, rel=0.01)
    assert models.describe("resnet20")["macs"] == pytest.approx(41e6, rel=0.02)


# Exact counts of both places of a bottleneck's stride (parameters are the same: only where the
# stride acts changes). He 2016a Table 1 gives FLOPs that are multiply-adds: 1.8 / 3.6 / 3.8 /
# 7.6 / 11.3 (x1e9) for 18 / 34 / 50 / 101 / 152 layers, its Caffe nets striding in the first 1x1.
BOTTLENECK_MACS = {  # depth: (params, MACs with the stride in the 1x1, in the 3x3 (torchvision v1.5))
    50: (25_557_032, 3_857_973_248, 4_089_184_256),
    101: (44_549_160, 7_570_194_432, 7_801_405_440),
    152: (60_192_808, 11_282_415_616, 11_513_626_624),
}
PAPER_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


@pytest.mark.parametrize("depth", sorted(BOTTLENECK_MACS))
def test_bottleneck_stride_places_are_counted_exactly(depth):
    params, macs_1x1, macs_3x3 = BOTTLENECK_MACS[depth]
    paper = models.describe(f"resnet{depth}", bottleneck_stride="1x1")
    v15 = models.describe(f"resnet{depth}")  # the registered preset is torchvision's v1.5
    assert (paper["params"], paper["macs"]) == (params, macs_1x1)
    assert (v15["params"], v15["macs"]) == (params, macs_3x3)


@pytest.mark.parametrize("depth", sorted(PAPER_GFLOPS))
def test_the_papers_layout_gives_table1_gflops(depth):
    # Table 1 counts the 18/34-layer nets without projections (3.64 with option A, 3.66 with B);
    # its one-decimal figures match ours within 0.06e9 (ResNet-50: 3.86 against "3.8"), while
    # v1.5's bottlenecks miss by more than 0.2e9.
    block = "bottleneck" if depth >= 50 else "basic"
    spec = models.ArchSpec(family="imagenet", depth=depth, block=block, shortcut="B" if depth >= 50 else "A")
    assert spec.bottleneck_stride == "1x1"  # the field's default is the papers' placement
    assert models.describe(models.build(spec))["macs"] / 1e9 == pytest.approx(PAPER_GFLOPS[depth], abs=0.06)
    if block == "bottleneck":
        v15 = models.describe(models.build(spec.replace(bottleneck_stride="3x3")))["macs"] / 1e9
        assert abs(v15 - PAPER_GFLOPS[depth]) > 0.2


def test_cifar_bottleneck_strides_in_its_first_1x1_as_resnet_1k_layers():
    # resnet-pre-act.lua: Convolution(nInputPlane, nBottleneckPlane, 1, 1, stride, stride, 0, 0),
    # then the 3x3 at stride 1.
    net = models.build("preact-resnet164")
    first = net.stages[1][0]
    assert (first.conv1.stride, first.conv2.stride) == ((2, 2), (1, 1))
    assert (models.describe("preact-resnet164")["macs"], models.describe("resnet1001")["macs"]) == (
        244_500_992, 1_487_849_984)
    v15 = models.build("preact-resnet164", bottleneck_stride="3x3").stages[1][0]
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))


def test_bottleneck_stride_is_named_only_on_bottleneck_nets():
    from runners.tracking.naming import axis_tags, variant_name
    v15 = models.resolve("resnet50")
    assert "stride3x3" in variant_name(v15) and axis_tags(v15, 0)["bottleneck_stride"] == "3x3"
    assert "stride" not in variant_name(models.resolve("resnet50", bottleneck_stride="1x1"))
    basic = models.resolve("resnet34", bottleneck_stride="3x3")  # a basic net has one place to stride
    assert "bottleneck_stride" not in axis_tags(basic, 0) and variant_name(basic) == variant_name(
        models.resolve("resnet34"))
    with pytest.raises(models.ConfigError, match="bottleneck_stride must be one of 1x1, 3x3"):
        models.resolve("resnet50", bottleneck_stride="2x2")


def test_complexity_of_a_built_module_equals_describe_by_name():
    net = models.build("resnet32", shortcut="B")
    assert models.describe(net)["params"] == models.describe("resnet32", shortcut="B")["params"]
    assert models.describe(net)["macs"] == models.describe("resnet32", shortcut="B")["macs"]
    rows = net.complexity().rows
    assert [r["module"] for r in rows] == ["stem", "stages.0", "stages.1", "stages.2", "head"]
    assert sum(r["params"] for r in rows) == models.describe(net)["params"]


def _count_3x3(net):
    return sum(1 for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))


@pytest.mark.parametrize("block,shortcut,preact", list(itertools.product(
    ["basic", "bottleneck"], ["none", "A", "B", "C"], [False, True])))
def test_every_combination_builds_runs_and_has_the_right_convs(block, shortcut, preact):
    depths = (8, 14) if block == "basic" else (11, 20)
    for depth in depths:
        spec = ArchSpec(family="cifar", depth=depth, block=block, shortcut=shortcut, preact=preact)
        net = models.build(spec)
        n = spec.stage_depths[0]
        # Stem plus two 3x3 convs per basic block, one per bottleneck.
        assert _count_3x3(net) == 1 + 3 * n * (2 if block == "basic" else 1)
        y = net(torch.randn(2, 3, 32, 32))
        assert y.shape == (2, 10)
        y.sum().backward()
        assert all(p.grad is not None for p in net.parameters())
        has_shortcut = [b.is_residual for b in net.blocks()]
        assert all(has_shortcut) if shortcut != "none" else not any(has_shortcut)


def test_plain_and_residual_twins_differ_only_in_shortcuts():
    plain, res = models.build("plain20"), models.build("resnet20")
    assert [(n, p.shape) for n, p in plain.named_parameters()] == \
           [(n, p.shape) for n, p in res.named_parameters()]
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    res.load_state_dict(plain.state_dict())
    for b in res.blocks():  # with the shortcuts cut, the residual net is its plain twin
        b.shortcut = None
    plain.eval(), res.eval()
    torch.testing.assert_close(plain(x), res(x))


def test_option_a_pads_zero_channels_and_subsamples():
    pad = PadShortcut(16, 32, stride=2)
    x = torch.randn(1, 16, 8, 8)
    y = pad(x)
    assert y.shape == (1, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert y[:, 16:].abs().sum() == 0
    assert "PadShortcut(16, 32, stride=2)" in repr(models.build("resnet20"))


def test_overrides_change_any_field():
    net = models.build("resnet56", shortcut="B", preact=True, width=2)
    assert (net.spec.shortcut, net.spec.preact, net.spec.width, net.spec.total_depth) == ("B", True, 2, 56)
    assert net.stem.conv.out_channels == 32
    assert models.resolve("resnet20", depth=32).stage_depths == (5, 5, 5)
    assert models.resolve("resnet26").total_depth == 26  # unregistered names of the grammar
    assert models.resolve("preact-resnet164").block == "bottleneck"
    assert models.resolve("resnet18", stages=[1, 1, 1, 1]).total_depth == 10


def test_registry_lists_with_wildcards_and_refuses_duplicates():
    assert models.list_models("plain*") == ["plain18", "plain20", "plain32", "plain34", "plain44",
                                            "plain56", "plain110", "plain1202"]
    assert "preact-resnet110" in models.list_models("preact-*")
    assert models.list_models("resnet*", exclude="resnet1*") == ["resnet20", "resnet32", "resnet34",
                                                                  "resnet44", "resnet50", "resnet56"]
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("resnet20", ArchSpec())


@pytest.mark.parametrize("name,overrides,message", [
    ("resnet21", {}, r"depth must be 6n\+2 for basic blocks \(nearest: 20, 26\)"),
    ("resnet32", {"block": "bottleneck"}, r"depth must be 9n\+2 for bottleneck blocks \(nearest: 29, 38\)"),
    ("resnt20", {}, r"unknown model 'resnt20'; closest: resnet20"),
    ("resnet20", {"shortcut": "D"}, r"shortcut must be one of none, A, B, C, got 'D'"),
    ("resnet20", {"colour": "red"}, r"unknown architecture field\(s\) colour; valid fields: family"),
    ("resnet50", {"block": "basic"}, r"imagenet depth 50 uses bottleneck blocks"),
    ("resnet18", {"depth": 19}, r"imagenet depth must be one of 18, 34, 50, 101, 152"),
])
def test_bad_names_and_configurations_say_what_is_valid(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        models.build(name, **overrides)


def test_he_init_and_optional_zero_init_of_last_bn():
    net = models.build("resnet20")
    conv = net.stages[0][0].conv1
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.15)
    assert all(b.bn2.weight.abs().sum() > 0 for b in net.blocks())  # off by default
    zeroed = models.build("resnet20", zero_init_last=True)
    assert all(b.bn2.weight.abs().sum() == 0 for b in zeroed.blocks())
    plain = models.build("plain20", zero_init_last=True)  # a plain block has no branch to silence
    assert all(b.bn2.weight.abs().sum() > 0 for b in plain.blocks())
    pre = models.build("preact-resnet20", zero_init_last=True)
    assert all(b.conv2.weight.abs().sum() == 0 for b in pre.blocks())


@pytest.mark.parametrize("batch", [1, 3])
def test_seed_network_trains_one_step_at_224(batch):
    torch.manual_seed(0)
    net = models.build("seed", width=0.25)  # the seed layout at a quarter of the width, for speed
    assert net.num_classes == 2 and net.spec.stage_depths == (3, 4, 6, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 2, (batch,))
    if batch == 1:
        net.eval()  # BN cannot use batch statistics of a single 1x1 map in train mode
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    # The seed layout: stride on the last block's first 1x1 conv of stages 1-3, none in stage 4.
    strides = [[b.conv1.stride[0] for b in stage] for stage in net.stages]
    assert strides == [[1, 1, 2], [1, 1, 1, 2], [1] * 5 + [2], [1, 1, 1]]
    assert models.build("seed").stages[0][0].shortcut is not None  # 64 -> 256 needs a projection
    assert isinstance(models.build("seed").stages[0][1].shortcut, nn.Identity)  # no needless projection


def test_layer_response_points_are_the_3x3_layers():
    net = models.build("resnet20")
    points = net.response_modules()
    assert len(points) == _count_3x3(net) == 19
    assert all(isinstance(m, nn.BatchNorm2d) for _, m in points)


def test_ablate_models_table_json_and_errors():
    out = ablate("models", "resnet2*")
    assert out.returncode == 0, out.stderr
    assert "resnet20" in out.stdout and "269,722" in out.stdout and "40.6M" in out.stdout
    js = ablate("models", "plain20", "--json")
    assert js.returncode == 0
    import json
    row = json.loads(js.stdout)[0]
    assert (row["name"], row["shortcut"], row["params"]) == ("plain20", "none", 269_722)
    for bad, msg in [("resnet21", "depth must be 6n+2 for basic blocks (nearest: 20, 26)"),
                     ("resnt20", "closest: resnet20")]:
        out = ablate("models", bad)
        assert out.returncode == 2
        assert msg in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert "Traceback" not in out.stderr


@pytest.mark.parametrize("name", [_deep_is_slow(models.resolve(n).total_depth, n) for n in models.list_models()])
def test_golden_complexity_file_matches_the_live_count(name):
    """`ablate models` reads sizes from models/complexity.json; it must equal a fresh count.
    After changing a block or a preset: python -c "from models.registry import write_golden; write_golden()"."""
    from models import registry
    assert registry._golden()[name] == registry.measure(models.resolve(name))


def test_listing_models_and_the_parser_import_no_torch():
    code = ("import sys; from runners.cli import build_parser, main; build_parser(); "
            "assert main(['models', 'resnet1*']) == 0; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert "resnet110" in out.stdout and "1,727,962" in out.stdout
