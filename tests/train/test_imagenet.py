"""The ImageNet half: the streamed ImageFolder path against the in-memory one, its deterministic
augmentation and rank slices, the recipe presets, and the CPU-scale spec trained end to end."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import ArchSpec
from runners.errors import ConfigError
from runners.study.spec import load_spec
from runners.tracking import naming as tracking
from runners.train.config import DataConfig, TrainConfig, apply_recipe, from_mapping
from runners.train.data import Dataset, load_dataset
from runners.train.stream import EpochBatches, StreamDataset, upscale_folder
from runners.train.trainer import train

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data" / "cifar10-jpeg-subset"

pytestmark = pytest.mark.usefixtures("results")  # conftest: results/ (caches) in tmp


def _folder(root: Path, size=(20, 16), per_class=12, classes=("ant", "bee", "cat"), suffix=".png") -> Path:
    """A small ImageFolder of random images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 3)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = size if not callable(size) else size(rng)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:03}{suffix}")
    return root


def _batches(data, epoch, seed, batch=8, **kw):
    return list(data.train_batches(epoch, batch, torch.Generator().manual_seed(seed), seed=seed, **kw))


def test_streamed_loader_yields_the_in_memory_images_labels_and_order(tmp_path):
    root = _folder(tmp_path / "f", suffix=".jpg")  # the paths decode JPEGs with different libraries
    cfg = dict(name=str(root), val_size=6, subset=30, augment=False)
    mem = load_dataset(DataConfig(**cfg, loader="memory"))
    stream = load_dataset(DataConfig(**cfg, loader="stream")).with_workers(2)
    assert isinstance(mem, Dataset) and isinstance(stream, StreamDataset)
    # The same held-out images (split_seed), the same statistics, the same evaluation batches.
    assert torch.equal(mem.val.indices, stream.val.indices) and torch.equal(mem.train.indices, stream.train.indices)
    assert torch.equal(mem.mean, stream.mean) and mem.input_size == stream.input_size == 20  # the width
    for split in ("train", "val", "test"):
        a = list(mem.eval_batches(getattr(mem, split), 5))
        b = list(stream.eval_batches(getattr(stream, split), 5))
        assert torch.equal(torch.cat([x for x, _ in a]), torch.cat([x for x, _ in b]))
        assert torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in b]))
    # Training batches: the same images in the same order for a seed, epoch by epoch.
    for epoch in (1, 2):
        a, b = _batches(mem, epoch, 3), _batches(stream, epoch, 3)
        assert len(a) == len(b) == 3  # 24 train images, batch 8
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order = lambda d, e, s: torch.cat([y for _, y in _batches(d, e, s)])  # noqa: E731
    assert not torch.equal(order(stream, 1, 3), order(stream, 2, 3))
    assert not torch.equal(order(stream, 1, 3), order(stream, 1, 4))


def test_streamed_augmentation_depends_on_seed_epoch_and_image_only(tmp_path):
    root = _folder(tmp_path / "f", size=lambda rng: (int(rng.integers(20, 40)), int(rng.integers(20, 40))))
    cfg = DataConfig(str(root), val_size=6, crop=16, scale=(18, 30), resize=18, lighting=0.1, ten_crop=True,
                     normalize="channel")  # per channel: a mirrored crop is the mirror of the crop
    data = load_dataset(cfg)  # images of many sizes: streamed (auto)
    assert isinstance(data, StreamDataset) and data.input_size == 16
    a = _batches(data.with_workers(0), 1, 0)
    b = _batches(data.with_workers(2), 1, 0)  # other workers decode: the same batches
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert a[0][0].shape == (8, 3, 16, 16)
    again = _batches(data, 2, 0)
    assert not torch.equal(torch.cat([x for x, _ in a]), torch.cat([x for x, _ in again]))
    # Ten-crop evaluation: corners, center, and their mirror images; crop 4 is the center crop.
    x10, _ = next(data.eval_batches(data.test, 4))
    assert x10.shape == (4, 10, 3, 16, 16)
    assert torch.equal(x10[:, 5:], x10[:, :5].flip(-1))
    center_cfg = DataConfig(**{**cfg.__dict__, "ten_crop": False})
    center = StreamDataset(**{**data.__dict__, "config": center_cfg, "_loaders": {}})
    assert torch.equal(next(center.eval_batches(center.test, 4))[0], x10[:, 4])
    rrc = load_dataset(DataConfig(str(root), val_size=6, crop=16, resize=18, crop_mode="random_resized"))
    assert _batches(rrc, 1, 0)[0][0].shape == (8, 3, 16, 16)


def _fb_color_jitter(img: torch.Tensor, factors, order) -> torch.Tensor:
    """fb.resnet.torch's transforms.lua ColorJitter on one image, written out op by op."""
    gray = lambda x: (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).expand(3, -1, -1)  # noqa: E731
    ops = {0: lambda x, a: x * a,                                          # Brightness: blend with black
           1: lambda x, a: x * a + gray(x).mean() * (1 - a),               # Contrast: with the mean gray
           2: lambda x, a: x * a + gray(x) * (1 - a)}                      # Saturation: with the gray image
    for op in order:
        img = ops[op](img, factors[op])
    return img


def test_color_jitter_is_fb_resnet_torch_s_per_image_in_its_own_order():
    from runners.train.stream import color_jitter
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 5, 7, generator=gen)
    factors = 0.6 + 0.8 * torch.rand(6, 3, generator=gen)
    orders = [torch.randperm(3, generator=gen) for _ in range(6)]
    jitter = torch.cat([factors, torch.stack(orders).float()], 1)
    got = color_jitter(x.clone(), jitter)
    for i in range(6):
        torch.testing.assert_close(got[i], _fb_color_jitter(x[i], factors[i], orders[i].tolist()))
    assert torch.equal(color_jitter(x.clone(), torch.tensor([[1.0, 1, 1, 2, 0, 1]] * 6)), x)  # factors 1: unchanged


def test_color_augmentation_changes_training_batches_only_and_is_refused_where_it_would_be_ignored(tmp_path):
    root = _folder(tmp_path / "f")
    base = dict(name=str(root), val_size=6, normalize="channel")
    plain, jittered = (load_dataset(DataConfig(**base, color_jitter=v)) for v in (0.0, 0.4))
    assert isinstance(jittered, StreamDataset)  # colour augmentation streams (auto)
    a, b, again = _batches(plain, 1, 0), _batches(jittered, 1, 0), _batches(jittered, 1, 0)
    assert all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(a, b))  # the same images, recoloured
    assert not torch.equal(a[0][0], b[0][0]) and all(torch.equal(x, y) for (x, _), (y, _) in zip(b, again))
    xa, _ = next(plain.eval_batches(plain.test, 4))
    xb, _ = next(jittered.eval_batches(jittered.test, 4))
    assert torch.equal(xa, xb)  # evaluation is never augmented
    for bad in (dict(name="synthetic", lighting=0.1), dict(name=str(root), loader="memory", color_jitter=0.4)):
        with pytest.raises(ConfigError, match="streamed loader only"):
            DataConfig(**bad).validate()


def test_the_ranks_slices_put_together_are_the_single_process_batch():
    whole = list(EpochBatches(50, 8, seed=1, rank=0, world=1))
    parts = [list(EpochBatches(50, 8, seed=1, rank=r, world=2)) for r in range(2)]
    assert len(whole) == 6 and [len(b) for b in parts[0]] == [4] * 6
    assert all(w == p0 + p1 for w, p0, p1 in zip(whole, *parts))
    mem = load_dataset(DataConfig("synthetic", subset=60, val_size=10))  # augmented: one generator
    one = _batches(mem, 1, 5, batch=10)
    two = [_batches(mem, 1, 5, batch=10, rank=r, world=2) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(one, *two):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    with pytest.raises(ConfigError, match="divisible"):
        EpochBatches(50, 9, seed=0, world=2)


def test_recipe_presets_are_named_layered_under_explicit_values_and_logged():
    t, d = apply_recipe("imagenet", {"lr": 0.05, "epochs": None}, {"name": "x"})
    assert t["recipe"] == "he2016a-imagenet" and t["lr"] == 0.05 and t["epochs"] == 90 and t["batch_size"] == 256
    assert (d["scale"], d["crop"], d["resize"], d["lighting"]) == ([256, 480], 224, 256, 0.1)
    t, d = apply_recipe("cifar", {}, {})
    assert t == {"recipe": "he2016a-cifar"} and d == {}
    t, d = apply_recipe("imagenet", {"recipe": "torchvision-imagenet", "iterations": 100}, {})
    assert "epochs" not in t and "milestones" not in t and d["crop_mode"] == "random_resized"
    cfg = from_mapping(TrainConfig, t, "train")
    params = tracking.run_params(ArchSpec(family="imagenet", depth=18), cfg, DataConfig())
    assert params["train.recipe"] == "torchvision-imagenet"
    with pytest.raises(ConfigError, match="loader stream"):
        DataConfig("x", loader="memory", crop=224).validate()
    fig4 = load_spec(REPO / "ablations" / "he2016a-imagenet-fig4.yaml", check_data=False)
    table3 = load_spec(REPO / "ablations" / "he2016a-imagenet-table3.yaml", check_data=False)
    # the paper's schedule over the recipe's fixed one: /10 on a validation plateau, up to 60e4 iterations
    assert fig4.train.recipe == "he2016a-imagenet" and fig4.train.milestones is None
    assert (fig4.train.schedule, fig4.train.iterations, fig4.train.epochs) == ("plateau", 600_000, None)
    assert [v.arch.shortcut for v in fig4.variants] == ["none", "A", "none", "A"]
    assert [(v.arch.depth, v.arch.shortcut) for v in table3.variants] == \
        [(34, "A"), (34, "B"), (34, "C"), (50, "B"), (101, "B"), (152, "B")]
    assert table3.dataset.ten_crop and table3.resources.gpus_per_trial == 1
    with pytest.raises(ConfigError, match="divide evenly"):
        load_spec(REPO / "ablations" / "he2016a-imagenet-fig4.yaml", ["resources.gpus_per_trial=3"], check_data=False)


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared cifar10-jpeg-subset is absent")
def test_cpu_scale_imagenet_spec_trains_through_the_streamed_path(tmp_path, monkeypatch):
    upscale_folder(SHARED, tmp_path / "results" / "data" / "cifar10-96", 96, per_class=12)
    monkeypatch.chdir(tmp_path)  # the spec's dataset path is relative to the repository root
    spec = load_spec(REPO / "ablations" / "he2016a-imagenet-cpu.yaml",
                     ["dataset.subset=100", "dataset.val_size=36", "dataset.stats_images=64",
                      "train.epochs=1", "train.milestones=[1]", "train.workers=0",
                      "dataset.multi_scale=null"])  # multi-scale testing: the study test below
    data = load_dataset(spec.dataset)
    assert isinstance(data, StreamDataset) and (len(data.train), len(data.val), len(data.test)) == (64, 36, 120)
    variant = spec.variants[1]
    result = train(variant.arch, variant.recipe(spec.train, threads=2, probe=False), data)
    assert result.status == "finished" and result.epochs == 1
    m = result.final
    assert 0 <= m["val_error"] <= 1 and np.isfinite(m["test_loss"]) and m["iteration"] == 1  # 64 // 64


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared cifar10-jpeg-subset is absent")
@pytest.mark.usefixtures("seeded_store")
def test_cpu_scale_imagenet_study_tables_top1_top5_by_testing_beside_the_paper(tmp_path, results):
    """The CPU-scale ImageNet spec end to end: `ablate run` trains plain-18, ResNet-18 (A) and the
    paper's ResNet-50 with 10-crop and multi-scale testing; `ablate figures` reads MLflow alone
    and writes He 2016a Tables 2-4 as measured, beside the paper's numbers."""
    from conftest import ablate
    from mlflow.tracking import MlflowClient
    data = upscale_folder(SHARED, tmp_path / "cifar10-96", 96, per_class=12)
    spec = REPO / "ablations" / "he2016a-imagenet-cpu.yaml"
    sets = [f"dataset.name={data}", "dataset.subset=100", "dataset.val_size=36", "dataset.stats_images=64",
            "train.epochs=1", "train.workers=0", "train.probe=false"]
    out = ablate("run", spec, *[a for s in sets for a in ("--set", s)], "--device", "cpu")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    c = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("he2016a-imagenet-cpu").experiment_id], "tags.stage = 'confirm'")
    assert len(runs) == 3
    for r in runs:  # every evaluation's top-1 and top-5, 10-crop and the center crop, and multi-scale
        assert {"val_error_top5", "test_error_top5", "val_error_1crop", "test_error_top5_1crop",
                "test_error_multiscale", "test_error_top5_multiscale"} <= set(r.data.metrics)
        assert r.data.params["arch.bn_batch"] == "32" and r.data.params["train.schedule"] == "plateau"
    fifty = next(r for r in runs if r.data.params["depth"] == "50")
    assert fifty.data.params["arch.bottleneck_stride"] == "1x1"

    figures = tmp_path / "figures"
    out = ablate("figures", spec, "--out", figures)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = (figures / "imagenet.md").read_text()
    assert "1-crop top-1 / top-5 (%)" in table and "10-crop top-1 / top-5 (%)" in table
    assert "multi-scale top-1 / top-5 (%)" in table
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table.splitlines()
            if line.startswith("| plain-18") or line.startswith("| ResNet-")}
    assert set(rows) == {"plain-18 [bn_batch=32]", "ResNet-18 (A) [bn_batch=32]",
                         "ResNet-50 (B) [bn_batch=32] [bottleneck]"}
    rows = {k.replace(" [bn_batch=32]", ""): v for k, v in rows.items()}
    for cells in rows.values():  # our three testings: top-1 / top-5 each
        assert all(" / " in cells[i] for i in (2, 3, 4)), cells
    assert rows["plain-18"][5] == "27.94" and rows["ResNet-18 (A)"][5] == "27.88"  # Table 2, top-1 only
    assert rows["ResNet-50 (B) [bottleneck]"][5:7] == ["22.85 / 6.71", "20.74 / 5.25"]  # Tables 3 and 4
    assert "not ImageNet (by the folder's name)" in table and "width x0.25" in table
    assert "64k iterations" not in table and "64 per GPU" not in table  # the ImageNet recipe's notes, not CIFAR's


SEVEN = ("a", "b", "c", "d", "e", "f", "g")  # more than 5 classes: top-5 is not 0 by construction


def _small_net():
    import models
    torch.manual_seed(0)
    return models.build(ArchSpec(family="imagenet", depth=18, width=0.125), num_classes=len(SEVEN)).eval()


def test_ten_crop_logs_the_center_crops_own_1crop_numbers_and_top5(tmp_path):
    from runners.train.evaluation import evaluate
    from runners.train.execution import MixedPrecision
    root = _folder(tmp_path / "f", size=(28, 22), per_class=4, classes=SEVEN)
    base = dict(name=str(root), val_size=0, crop=16, resize=20, augment=False)
    net, cfg = MixedPrecision(_small_net(), False), TrainConfig(device="cpu", channels_last=False)
    one = load_dataset(DataConfig(**base, loader="stream")).with_workers(0)
    ten = load_dataset(DataConfig(**base, loader="stream", ten_crop=True)).with_workers(0)
    a, b = evaluate(net, one, one.test, cfg), evaluate(net, ten, ten.test, cfg)
    assert set(a) == {"loss", "error", "error_top5"}
    assert set(b) == {"loss", "error", "error_top5", "error_1crop", "error_top5_1crop"}
    # the center crop of the ten is the 1-crop evaluation, image for image
    assert (b["error_1crop"], b["error_top5_1crop"]) == (a["error"], a["error_top5"])
    x, y = next(one.eval_batches(one.test, 100))
    top5 = net(x).topk(5, 1).indices
    assert a["error_top5"] == pytest.approx((top5 != y[:, None]).all(1).float().mean().item())


def test_multiscale_testing_averages_the_softmax_over_whole_images_at_each_scale_and_their_mirrors(tmp_path):
    from runners.train.evaluation import evaluate_multiscale
    from runners.train.stream import _open, _resize_shorter
    root = _folder(tmp_path / "f", size=lambda rng: (int(rng.integers(18, 40)), int(rng.integers(18, 40))),
                   per_class=4, classes=SEVEN)
    cfg = DataConfig(name=str(root), val_size=0, crop=16, resize=18, multi_scale=(16, 30))
    data = load_dataset(cfg).with_workers(0)
    net = _small_net()
    with torch.no_grad():
        got = evaluate_multiscale(net, data, data.test, (16, 30), flip=True)
        mean = data.mean.mean((1, 2), keepdim=True)  # per channel: the per-pixel mean, averaged
        wrong = wrong5 = 0
        for path, label in zip(data.test.files, data.test.labels.tolist()):
            probs = 0
            for side in (16, 30):  # the whole image, its shorter side resized; not a crop
                x = (_resize_shorter(_open(path), side).float()[None] / 255 - mean) / data.std
                probs = probs + net(x).softmax(-1)[0] + net(x.flip(-1)).softmax(-1)[0]
            top = (probs / 4).topk(5).indices.tolist()
            wrong, wrong5 = wrong + (top[0] != label), wrong5 + (label not in top)
    n = len(data.test)
    assert got == pytest.approx({"error_multiscale": wrong / n, "error_top5_multiscale": wrong5 / n})
    # usable from `ablate train`: the flag is declared with the field
    from runners.cli import build_parser
    from runners.commands.fields import field_values
    from runners.train.config import CONFIG_CLASSES, assemble
    args = build_parser("train").parse_args(["train", "resnet18", "--dataset", str(root), "--crop", "16",
                                             "--multi-scale", "224,256,384,480,640", "--no-multi-scale-flip"])
    job = assemble(args.model, {s: field_values(args, s, cls) for s, cls in CONFIG_CLASSES.items()}, args.set)
    assert job.data.multi_scale == (224, 256, 384, 480, 640) and job.data.multi_scale_flip is False
    with pytest.raises(ConfigError, match="streamed loader only"):
        DataConfig("cifar10", multi_scale=(32, 40)).validate()
