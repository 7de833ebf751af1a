"""The analyses' methods checked on tiny nets: each property the papers' definitions imply."""
import math

import pytest
import torch
import torch.nn.functional as F

import models
from models.network import ResNet
from runners.analysis import cka, landscape, lesion, signal
from runners.analysis.loading import loss_and_error


def _net(depth=14, zero=False, seed=0, **kw):
    torch.manual_seed(seed)
    net = ResNet(models.resolve(f"resnet{depth}", zero_init_last=zero, **kw)).eval()
    # Non-trivial running statistics, so eval-mode BN is not the identity.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2)
            if m.weight.abs().sum() > 0:
                m.weight.data.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("order", ["post", "preact", "bn-after-add", "relu-before-add", "relu-preact"])
def test_deleting_a_zero_branch_changes_nothing(order):
    torch.manual_seed(0)
    net = ResNet(models.resolve("resnet14", order=order, zero_init_last=True)).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
        can = lesion.deletable(net)
        assert can == [0, 1, 3, 5]  # stage 1's two blocks, then each later stage's second block
        for i in can:
            with lesion.lesioned(net, [i]):
                torch.testing.assert_close(net(x), ref, rtol=0, atol=1e-5)
        with lesion.lesioned(net, can):
            torch.testing.assert_close(net(x), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(net(x), ref, rtol=0, atol=0)  # restored


def test_deleting_a_trained_branch_changes_the_output_and_is_restored():
    net = _net()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
        with lesion.lesioned(net, [1]):
            assert not torch.allclose(net(x), ref)
        assert torch.equal(net(x), ref)


def test_plain_deletion_is_the_identity_in_place_of_the_block():
    net = ResNet(models.resolve("plain14")).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), lesion.lesioned(net, [1]):
        out = net(x)
    blocks = [b for i, b in enumerate(net.stages[0]) if i != 1]
    with torch.no_grad():
        h = torch.nn.Sequential(*blocks)(net.stem(x))
        expected = net.head(net.stages[2](net.stages[1](h)))
    torch.testing.assert_close(out, expected)


def test_reordering_with_the_original_order_is_the_net_and_tau_reads_the_order():
    net = _net()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        fwd = lesion.forward_in_order(net, [list(range(len(s))) for s in net.stages])
        torch.testing.assert_close(fwd(x), net(x))
    assert lesion.kendall_tau([0, 1, 2, 3]) == 1 and lesion.kendall_tau([3, 2, 1, 0]) == -1
    assert lesion.kendall_tau([1, 0, 2, 3]) == pytest.approx(4 / 6)


@pytest.mark.parametrize("batch", [None, 40])  # Kornblith's CKA, and Nguyen et al.'s minibatch CKA
def test_cka_is_one_on_itself_and_invariant_to_rotation_and_isotropic_scaling(batch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 30, generator=g, dtype=torch.float64)
    y = x @ torch.randn(30, 20, generator=g, dtype=torch.float64) + 0.5 * torch.randn(120, 20, generator=g,
                                                                                         dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    assert cka.linear_cka(x, x, batch) == pytest.approx(1, abs=1e-12)
    base = cka.linear_cka(x, y, batch)
    assert 0 < base < 1
    assert cka.linear_cka(x @ q, y, batch) == pytest.approx(base, abs=1e-10)
    assert cka.linear_cka(7.5 * x, 0.01 * y, batch) == pytest.approx(base, abs=1e-10)
    # Not invariant to an arbitrary invertible map (Kornblith Sec. 3): CKA is not CCA.
    a = torch.diag(torch.logspace(-2, 2, 30, dtype=torch.float64))
    assert abs(cka.linear_cka(x @ a, y, batch) - base) > 1e-3


def test_cka_of_a_net_layer_with_itself_is_one():
    net = _net(8)
    g = cka.layer_grams(net, torch.randn(24, 3, 32, 32), batch=12)
    m = cka.cka_matrix(g, g)
    assert all(m[i][i] == pytest.approx(1, abs=1e-9) for i in range(len(m)))


def test_filter_normalisation_gives_each_filter_its_weight_filter_norm():
    net = _net(8)
    d = landscape.random_direction(net, seed=3)
    for w, di in zip(net.parameters(), d):
        if w.dim() <= 1:
            assert torch.count_nonzero(di) == 0  # BN weights/biases and biases: ignored ('biasbn')
        else:
            torch.testing.assert_close(di.flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1))


def test_the_landscape_at_the_origin_is_the_models_own_loss():
    net = _net(8)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    with torch.no_grad():
        own = float(F.cross_entropy(net(x), y))
    d1, d2 = landscape.random_direction(net, 1), landscape.random_direction(net, 2)
    (at0,) = landscape.slice_losses(net, x, y, [d1, d2], [(0.0, 0.0)])
    assert at0[0] == pytest.approx(own, rel=1e-5)
    moved = landscape.slice_losses(net, x, y, [d1], [(0.5,)])[0][0]
    assert moved != pytest.approx(own, rel=1e-3)
    assert loss_and_error(net, x, y)[0] == pytest.approx(own, rel=1e-5)  # weights restored


def test_signal_propagation_records_every_block_and_restores_the_net():
    net = _net(14)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    out = signal.propagate(net, 16, seed=0)
    assert len(out["var"]) == len(net.blocks()) + 1 and len(out["branch_var"]) == len(net.blocks())
    assert all(math.isfinite(v) and v > 0 for v in out["var"])
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert not hasattr(net.blocks()[0], "_branch") or "_branch" not in vars(net.blocks()[0])


def test_gradient_norms_read_a_checkpoint_left_behind_and_note_the_missing_epochs(tmp_path, monkeypatch):
    from runners.analysis import gradients
    from runners.analysis.analyze import Context, Options
    from runners.analysis.loading import TrainedRun
    from runners.train.config import DataConfig
    monkeypatch.setenv("ABLATE_RESULTS", str(tmp_path))
    arch = models.resolve("resnet8")
    run = TrainedRun("r0", None, 0, arch, DataConfig("synthetic", subset=64, val_size=0), 10,
                     {"train": {"epochs": 4}}, variant_key="cifar-d8")
    ctx = Context(Options(images=8, sweep_points=4, sweeps=1, grad_batch=8), study="s")
    ctx._nets["r0"] = _net(8)  # the run's final weights, without an MLflow store
    folder = tmp_path / "checkpoints" / "s" / "confirm" / "cifar-d8" / "seed0"
    folder.mkdir(parents=True)
    torch.save({"epoch": 2, "model": _net(8, seed=1).state_dict()}, folder / "checkpoint.pt")
    out = gradients.compute(ctx, run)
    assert sorted(out["norms"], key=int) == ["0", "2", "4"]
    assert len(out["norms"]["2"]) == len(out["layers"]) == 8  # 7 convs and the classifier
    assert out["notes"] == ["epochs 1, 3: no checkpoint kept (deleted when the trial finished); "
                            "gradient norms at init, epoch 2, epoch 4"]
    assert gradients._ranges([1, 2, 3, 5, 7, 8]) == "1..3, 5, 7..8"
