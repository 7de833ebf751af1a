"""The data pipeline: batched augmentation, fixed splits, normalisation, the three kinds of source."""
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from runners.errors import ConfigError
from runners.train import data as data_mod
from runners.train.config import DataConfig
from runners.train.data import augment, load_dataset

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg-subset"  # beside the repo


pytestmark = pytest.mark.usefixtures("results")  # conftest: results/ (the ImageFolder cache) in tmp


def test_augment_is_a_padded_crop_with_flips_for_the_whole_batch():
    n, pad = 256, 4
    x = torch.arange(1, n * 3 * 32 * 32 + 1, dtype=torch.float32).view(n, 3, 32, 32)  # unique, non-zero
    out = augment(x, torch.Generator().manual_seed(0), pad)
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    windows = padded.unfold(2, 32, 1).unfold(3, 32, 1)  # (N, 3, 9, 9, 32, 32): every possible crop
    plain = (windows == out[:, :, None, None]).flatten(4).all(-1).all(1)  # (N, 9, 9)
    flipped = (windows.flip(-1) == out[:, :, None, None]).flatten(4).all(-1).all(1)
    matches = torch.stack([plain, flipped], 1).flatten(1)  # (N, 2*81)
    assert (matches.sum(1) == 1).all(), "every output is exactly one crop (within the padding), maybe flipped"
    which = matches.int().argmax(1)
    flips, offsets = which // 81, which % 81
    assert 0.35 < flips.float().mean() < 0.65  # about half are flipped
    assert len(offsets.unique()) > 40  # the offsets cover the 9x9 range
    # Some crops reach into the zero padding; none go beyond it (shape and match above).
    assert (out == 0).any()


def test_augment_follows_its_generator():
    x = torch.rand(64, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_training_batches_are_augmented_and_evaluation_batches_are_not():
    d = load_dataset(DataConfig("synthetic", subset=300, val_size=50))
    idx = torch.arange(64)
    x_eval, y = d.batch(d.train, idx)
    x_train, y2 = d.batch(d.train, idx, torch.Generator().manual_seed(0))
    assert torch.equal(y, y2) and torch.equal(x_eval, d.normalize(d.train.images[:64]))
    assert not torch.equal(x_train, x_eval)
    off = load_dataset(DataConfig("synthetic", subset=300, val_size=50, augment=False))
    assert torch.equal(off.batch(off.train, idx, torch.Generator())[0], x_eval)


def test_val_split_is_disjoint_from_train_and_fixed_by_split_seed():
    cfg = DataConfig("synthetic", subset=500, val_size=100, split_seed=0)
    a, b = load_dataset(cfg), load_dataset(cfg)
    other = load_dataset(DataConfig("synthetic", subset=500, val_size=100, split_seed=1))
    assert len(a.train) == 400 and len(a.val) == 100
    assert not set(a.train.indices.tolist()) & set(a.val.indices.tolist())
    assert set(a.train.indices.tolist()) | set(a.val.indices.tolist()) == set(range(500))
    assert torch.equal(a.val.indices, b.val.indices) and torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.indices, other.val.indices)
    assert torch.equal(a.test.images, other.test.images)  # the test set never depends on the split


def test_synthetic_is_deterministic_balanced_and_on_the_requested_device():
    d = load_dataset(DataConfig("synthetic", subset=1000, val_size=0), torch.device("cpu"))
    again = load_dataset(DataConfig("synthetic", subset=1000, val_size=0))
    assert torch.equal(d.train.images, again.train.images)
    assert d.train.images.dtype == torch.uint8 and d.train.labels.dtype == torch.int64
    assert d.train.images.shape == (1000, 3, 32, 32) and d.num_classes == 10 and d.input_size == 32
    assert torch.bincount(d.train.labels).tolist() == [100] * 10
    assert len(d.val) == 0 and len(d.test) == 200


def test_pixel_mean_subtraction_vs_channel_standardisation():
    pixel = load_dataset(DataConfig("synthetic", subset=600, val_size=100, normalize="pixel_mean"))
    x = pixel.normalize(pixel.train.images)
    assert pixel.mean.shape == (3, 32, 32)
    torch.testing.assert_close(x.mean(0), torch.zeros(3, 32, 32), atol=1e-5, rtol=0)  # every pixel
    assert torch.equal(pixel.std, torch.ones(3, 1, 1))
    channel = load_dataset(DataConfig("synthetic", subset=600, val_size=100, normalize="channel"))
    x = channel.normalize(channel.train.images)
    assert channel.mean.shape == (3, 1, 1)
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    assert x.mean(0).abs().max() > 0.05  # per channel leaves per-pixel structure in place
    # Statistics come from the training split only, not from validation.
    expected = channel.train.images.double().div(255).mean((0, 2, 3)).float().view(3, 1, 1)
    torch.testing.assert_close(channel.mean, expected)


def _write_folder(root: Path, classes=("cat", "ant", "bee"), per_split={"train": 5, "test": 2}, size=32):
    from PIL import Image
    rng = np.random.default_rng(0)
    written = {}
    for split, n in per_split.items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i:03d}.png")  # lossless
                written[(split, c, i)] = arr
    return written


def test_imagefolder_is_decoded_exactly_and_cached(tmp_path, results, monkeypatch):
    root = tmp_path / "tiny"
    written = _write_folder(root)
    d = load_dataset(DataConfig(str(root), val_size=3))
    assert d.classes == ["ant", "bee", "cat"] and d.name == "tiny"
    assert (len(d.train), len(d.val), len(d.test)) == (12, 3, 6)
    # Test images come in class order, then file order: check them pixel for pixel.
    for j, (c, i) in enumerate([(c, i) for c in d.classes for i in range(2)]):
        assert torch.equal(d.test.images[j], torch.from_numpy(written[("test", c, i)]).permute(2, 0, 1))
        assert d.test.labels[j] == d.classes.index(c)
    cache = list((results / "cache").glob("imagefolder-tiny-*.pt"))
    assert len(cache) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")
    monkeypatch.setattr(data_mod, "_decode", no_decoding)
    again = load_dataset(DataConfig(str(root), val_size=3))
    assert torch.equal(again.train.images, d.train.images) and torch.equal(again.test.labels, d.test.labels)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared cifar10-jpeg-subset is absent")
def test_shared_jpeg_subset_loads_as_imagefolder():
    d = load_dataset(DataConfig(str(SHARED), val_size=1000))
    assert (len(d.train), len(d.val), len(d.test)) == (9000, 1000, 2000)
    assert d.num_classes == 10 and d.input_size == 32 and "airplane" in d.classes
    assert torch.bincount(d.test.labels).tolist() == [200] * 10


def test_missing_or_malformed_paths_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nowhere'} does not exist.*train/<class>"):
        load_dataset(DataConfig(str(tmp_path / "nowhere")))
    _write_folder(tmp_path / "notest", per_split={"train": 2})
    with pytest.raises(ConfigError, match="has no test/ folder"):
        load_dataset(DataConfig(str(tmp_path / "notest"), val_size=1))
    _write_folder(tmp_path / "mixed", per_split={"train": 2, "test": 1})
    _write_folder(tmp_path / "mixed", classes=("dog",), per_split={"train": 1}, size=16)
    with pytest.raises(ConfigError, match="one size"):
        load_dataset(DataConfig(str(tmp_path / "mixed"), val_size=1))


def test_split_sizes_are_checked():
    with pytest.raises(ConfigError, match="must be smaller than"):
        load_dataset(DataConfig("synthetic", val_size=10_000))
    with pytest.raises(ConfigError, match="must exceed"):
        load_dataset(DataConfig("synthetic", subset=100, val_size=100))


def test_offline_cifar_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "__init__", offline)
    with pytest.raises(ConfigError) as e:
        load_dataset(DataConfig("cifar10", root=str(tmp_path / "d")))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "d") in msg and "cifar-10-python.tar.gz" in msg


def test_normalize_is_the_papers_formula_in_one_multiply_add():
    for kind in ("pixel_mean", "channel"):
        d = load_dataset(DataConfig("synthetic", subset=300, val_size=50, normalize=kind))
        images = d.train.images[:32]
        expected = (images.float() / 255 - d.mean) / d.std
        torch.testing.assert_close(d.normalize(images), expected, atol=1e-5, rtol=1e-5)
        assert d.to("cpu").normalize(images).dtype == torch.float32
