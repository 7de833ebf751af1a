"""The authors' code as a named recipe, the gates' weight decay as an option, the classifier's
bias as fb.resnet.torch sets it."""
import torch

from models.spec import ArchSpec
from models.network import ResNet
from runners.train.config import TrainConfig, assemble
from runners.train.schedule import LRSchedule, Plan
from runners.train.trainer import make_optimizer


def test_resnet_1k_layers_recipe_is_fb_resnet_torch_cifar_training():
    """KaimingHe/resnet-1k-layers: `-batchSize 64 -nEpochs 200` on fb.resnet.torch (train.lua:
    lr 0.1 x 0.1^(epoch >= 81) x 0.1^(epoch >= 122), Nesterov, dampening 0; per-channel mean/std)."""
    job = assemble("preact-resnet1001", {"arch": {"block": "bottleneck", "shortcut": "B"},
                                         "train": {"recipe": "resnet-1k-layers"}})
    t, d = job.train, job.data
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.nesterov, t.weight_decay, t.warmup) == \
        (200, 64, 0.1, 0.9, True, 1e-4, False)
    assert (d.val_size, d.normalize) == (0, "channel")
    # the lr of each 1-based epoch, as train.lua computes it
    plan = Plan.of(t, 50_000)
    sched = LRSchedule(t, plan)
    per_epoch = plan.steps_per_epoch
    for epoch, want in ((1, 0.1), (80, 0.1), (81, 0.01), (121, 0.01), (122, 0.001), (200, 0.001)):
        it = (epoch - 1) * per_epoch
        assert abs(sched.lr(it) - want) < 1e-12, (epoch, sched.lr(it))
    # explicit values still win over the preset's
    assert assemble("resnet20", {"train": {"recipe": "resnet-1k-layers", "epochs": 3}}).train.epochs == 3


def _gated():
    torch.manual_seed(0)
    return ResNet(ArchSpec(depth=8, shortcut="gate", gate_bias=-6.0))


def test_the_gates_bias_is_decayed_unless_told_not_to():
    """He 2016b does not say whether b_g is decayed; Caffe and Torch decay every parameter (the
    default). With zero gradients a step is pure decay: b_g moves toward 0 only by default."""
    for decay, moves in ((True, True), (False, False)):
        net = _gated()
        cfg = TrainConfig(lr=0.1, weight_decay=0.1, momentum=0.0, gate_bias_decay=decay)
        opt = make_optimizer(net, cfg)
        gates = [m.gate_bias for m in net.modules() if hasattr(m, "gate_bias")]
        assert gates
        convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        before_g, before_w = [g.detach().clone() for g in gates], convs[0].detach().clone()
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        moved = any(not torch.equal(g, b) for g, b in zip(gates, before_g))
        assert moved is moves
        assert torch.allclose(gates[0], before_g[0] * (1 - 0.01)) is moves  # b <- b - lr * wd * b
        assert torch.allclose(convs[0], before_w * (1 - 0.01))  # every other parameter decays


def test_the_classifier_bias_starts_at_zero():
    """fb.resnet.torch and resnet-1k-layers zero nn.Linear's bias (Caffe's filler is 0 too)."""
    for arch in (ArchSpec(depth=20), ArchSpec(family="imagenet", depth=18)):
        fc = [m for m in ResNet(arch).modules() if isinstance(m, torch.nn.Linear)]
        assert fc and all(torch.count_nonzero(m.bias) == 0 for m in fc)
        assert all(m.weight.abs().max() <= 1 / m.in_features ** 0.5 for m in fc)  # torch's default, kept
