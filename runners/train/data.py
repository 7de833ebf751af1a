"""Datasets held on the training device, augmented in whole batches (airbench's loader, generalised).

    data = load_dataset(DataConfig("cifar10", val_size=5000), torch.device("cuda"))
    x, y = data.batch(data.train, idx, generator)   # normalised, padded-cropped-flipped, on device

Each split is decoded once into one uint8 tensor (N, 3, H, W) on the device; a training batch is
a `randperm` slice of it, normalised and augmented there with the paper's recipe (He 2016a Sec.
4.2: 4-pixel padding, random 32x32 crop, horizontal flip) as one gather: no per-image Python or
PIL in the training loop.

Sources (`DataConfig.name`):
    cifar10, cifar100  torchvision's, downloaded into DataConfig.root on first use.
    synthetic          generated, learnable and deterministic: 10 smooth class patterns plus
                       noise, 32x32; `subset` training images (default 10,000), a fifth as many
                       test images. For tests and smoke runs.
    a path             an ImageFolder root with train/<class>/* and test/<class>/* images of one
                       size. Decoded once and cached as uint8 under results/cache/.

The validation split is carved from the training images (after `subset`), both fixed by
`split_seed`, never by the training seed. Normalisation statistics come from the training split
only (the validation and test images are never looked at).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError
from ..files import atomic_write
from ..paths import results_dir
from . import stream
from .config import BUILTIN_DATASETS, DataConfig
from .images import IMAGEFOLDER_HINT, epoch_permutation, list_imagefolder, shard, split_indices, statistics, undecodable

TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}
SYNTHETIC_TRAIN = 10_000  # default size of the synthetic training set
SYNTHETIC_CLASSES = 10
PAD = 4  # He 2016a Sec. 4.2: "4 pixels are padded on each side"


@dataclass
class Split:
    """Images (N, 3, H, W) uint8 and labels (N,) int64, on one device."""

    images: torch.Tensor
    labels: torch.Tensor
    # Positions in the source's training set (train and val splits), to prove the split; None for test.
    indices: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device), self.indices)


@dataclass
class Dataset:
    """The three splits of one dataset on one device, and the training split's statistics."""

    name: str  # short name for display: cifar10, synthetic, or the ImageFolder's folder name
    train: Split
    val: Split  # empty when val_size == 0
    test: Split
    classes: list[str]
    mean: torch.Tensor  # float32, [0, 1] units: (3, H, W) per-pixel or (3, 1, 1) per-channel
    std: torch.Tensor  # float32 (3, 1, 1); ones for per-pixel mean subtraction
    config: DataConfig
    # normalize() as one multiply-add: x * scale + shift == (x / 255 - mean) / std
    scale: torch.Tensor = field(init=False, repr=False)
    shift: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.scale = (1 / (255 * self.std)).to(self.mean.device)
        self.shift = (-self.mean / self.std).to(self.mean.device)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> int:
        return int(self.train.images.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.train.images.device

    def to(self, device: torch.device | str) -> "Dataset":
        device = torch.device(device)
        if self.device == device:
            return self
        return dataclasses.replace(self, train=self.train.to(device), val=self.val.to(device),
                                   test=self.test.to(device), mean=self.mean.to(device), std=self.std.to(device))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 (N, 3, H, W), mean-subtracted (and scaled, per channel)."""
        x = images.float()
        return torch.addcmul(self.shift, x, self.scale, out=x)

    def batch(self, split: Split, idx: torch.Tensor,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `idx` of `split`, normalised; augmented when a generator is given and the
        config asks for augmentation (training batches only)."""
        x = self.normalize(split.images[idx])
        if generator is not None and self.config.augment:
            x = augment(x, generator)
        return x, split.labels[idx]

    def train_batches(self, epoch: int, batch_size: int, generator: torch.Generator, *, seed: int = 0,
                      rank: int = 0, world: int = 1):
        """The epoch's training batches of this rank: (x, y) on the device, augmented.

        `batch_size` is the global batch. The order is `epoch_permutation(seed, epoch)`, the
        streamed path's too; every rank draws the augmentation of the whole global batch from the
        same generator and keeps its own contiguous slice, so the ranks' slices put together are
        the single-process batch and the generators stay in step. The last partial batch is
        dropped (see schedule.Plan).
        """
        n = len(self.train)
        perm = epoch_permutation(n, seed, epoch).to(self.device)
        local = batch_size // world
        for s in range(n // batch_size or 1):
            x, y = self.batch(self.train, perm[s * batch_size:(s + 1) * batch_size], generator)
            yield x[rank * local:(rank + 1) * local], y[rank * local:(rank + 1) * local]

    def eval_batches(self, split: Split, batch_size: int, rank: int = 0, world: int = 1):
        """(x, y) of `split` without augmentation, this rank's contiguous shard of it."""
        lo, hi = shard(len(split), rank, world)
        for i in range(lo, hi, batch_size):
            yield self.batch(split, slice(i, min(i + batch_size, hi)))

    def summary(self) -> str:
        return (f"{self.name}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test, "
                f"{self.num_classes} classes, {self.input_size}x{self.input_size}, {self.config.normalize}")


# -- augmentation ---------------------------------------------------------------------------------
def augment(x: torch.Tensor, generator: torch.Generator, pad: int = PAD) -> torch.Tensor:
    """Zero-pad by `pad`, take a random HxW crop and flip half the images, for the whole batch at once.

    x is normalised, so the zero padding is the mean (fb.resnet.torch pads after normalising).
    One gather does crop and flip together: the flipped crop reads its columns in reverse.
    Returns (N, C, H, W) in channels_last memory format (the gather writes NHWC).
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (N, C, H+2p, W+2p)
    span = 2 * pad + 1
    # One draw per image: offset dy, offset dx and the flip, as digits of one integer.
    r = torch.randint(0, span * span * 2, (n,), generator=generator, device=x.device)
    dy, dx, flip = r % span, (r // span) % span, (r // (span * span)).bool()
    images, channels, row_range, col_range = _ranges(x.device, n, c, h, w)
    rows = dy[:, None] + row_range  # (N, H)
    cols = dx[:, None] + col_range  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = padded[images, channels, rows[:, :, None, None], cols[:, None, :, None]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)  # (N, C, H, W) view, channels_last in memory


@functools.lru_cache(maxsize=8)
def _ranges(device: torch.device, n: int, c: int, h: int, w: int) -> tuple[torch.Tensor, ...]:
    """The gather's fixed index tensors for a batch shape (a run has one or two): made once, not
    per step. Shapes (N, 1, 1, 1), (1, 1, 1, C), (H,), (W,), broadcast to (N, H, W, C)."""
    return (torch.arange(n, device=device)[:, None, None, None], torch.arange(c, device=device)[None, None, None, :],
            torch.arange(h, device=device), torch.arange(w, device=device))


# -- loading --------------------------------------------------------------------------------------
def load_dataset(cfg: DataConfig, device: torch.device | str = "cpu") -> Dataset | stream.StreamDataset:
    """Load, split and normalise `cfg`'s dataset and put it on `device`; ConfigError if impossible.

    An ImageFolder too large to hold, or one read with per-image resizing, is streamed instead
    (`DataConfig.loader`; runners/train/stream.py): the result then offers the same interface.
    """
    cfg.validate()
    if cfg.name not in BUILTIN_DATASETS and cfg.loader != "memory":
        listing = list_imagefolder(Path(cfg.name).expanduser())
        if cfg.loader == "stream" or cfg.streamed_only or stream.too_large(listing):
            return stream.load_stream(cfg, listing, device)
    if cfg.name == "synthetic":
        name = "synthetic"
        n = cfg.subset or SYNTHETIC_TRAIN
        train_x, train_y, test_x, test_y, classes = synthetic(n, max(n // 5, 10))
    elif cfg.name in TORCHVISION:
        name = cfg.name
        train_x, train_y, test_x, test_y, classes = _load_torchvision(cfg.name, cfg.root)
    else:
        path = Path(cfg.name).expanduser()
        name = path.name
        train_x, train_y, test_x, test_y, classes = _load_imagefolder(path)

    train_idx, val_idx = split_indices(len(train_y), cfg, name)
    train = Split(train_x[train_idx], train_y[train_idx], train_idx)
    val = Split(train_x[val_idx], train_y[val_idx], val_idx)
    test = Split(test_x, test_y)
    mean, std = statistics(train.images, cfg.normalize)
    data = Dataset(name, train, val, test, classes, mean, std, cfg)
    return data.to(device)


def synthetic(n_train: int, n_test: int, size: int = 32):
    """A learnable, deterministic 10-class problem: each class is a smooth random colour pattern
    (4x4 noise upsampled to size x size); an image is its class pattern at a random contrast, plus
    pixel noise. Translations and flips keep the class, so the paper's augmentation applies."""
    g = torch.Generator().manual_seed(20160310)  # fixed: train and test share the class patterns
    protos = F.interpolate(torch.rand(SYNTHETIC_CLASSES, 3, 4, 4, generator=g), size=size,
                           mode="bicubic", align_corners=False).clamp(0, 1)  # (K, 3, S, S)

    def sample(n: int, seed: int):
        gs = torch.Generator().manual_seed(seed)
        labels = torch.randperm(n, generator=gs) % SYNTHETIC_CLASSES
        contrast = 0.35 + 0.3 * torch.rand(n, 1, 1, 1, generator=gs)
        noise = torch.rand(n, 3, size, size, generator=gs)
        x = contrast * protos[labels] + (1 - contrast) * noise
        return (x * 255).round().clamp(0, 255).to(torch.uint8), labels.long()

    train_x, train_y = sample(n_train, 1)
    test_x, test_y = sample(n_test, 2)
    return train_x, train_y, test_x, test_y, [f"class{k}" for k in range(SYNTHETIC_CLASSES)]


def _load_torchvision(name: str, root: str):
    import torchvision
    cls = getattr(torchvision.datasets, TORCHVISION[name])
    splits = []
    for is_train in (True, False):
        try:
            ds = cls(root, train=is_train, download=True)
        except (OSError, RuntimeError) as e:  # URLError is an OSError; a corrupt archive a RuntimeError
            reason = (str(getattr(e, "reason", "") or e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise ConfigError(f"cannot get {name} into {root}/ ({reason}); offline? put {cls.filename} "
                              f"(from {cls.url}) into {root}/ or give --data-root") from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
        splits += [images, torch.tensor(ds.targets, dtype=torch.long)]
    return (*splits, list(ds.classes))


def _load_imagefolder(root: Path):
    """Decode an ImageFolder root once; later loads read the uint8 cache (keyed by path, names,
    sizes and modification times, so edited folders are decoded again)."""
    listing = list_imagefolder(root)
    classes = sorted(listing["train"])

    key = hashlib.sha1(str(root.resolve()).encode())
    for split in ("train", "test"):
        for cls_name, files in listing[split].items():
            for f in files:
                st = f.stat()
                key.update(f"{split}/{cls_name}/{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    cache = results_dir() / "cache" / f"imagefolder-{root.name}-{key.hexdigest()[:16]}.pt"
    if cache.exists():
        try:
            d = torch.load(cache, weights_only=True)
            return d["train_x"], d["train_y"], d["test_x"], d["test_y"], list(d["classes"])
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
            pass
    index = {c: i for i, c in enumerate(classes)}
    train_x, train_y = _decode(listing["train"], index)
    test_x, test_y = _decode(listing["test"], index)
    if len(test_y) == 0:
        raise ConfigError(f"{root / 'test'} holds no images; {IMAGEFOLDER_HINT}")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ConfigError(f"{root}: train images are {tuple(train_x.shape[2:])}, test images "
                          f"{tuple(test_x.shape[2:])}; all images must have one size")
    try:
        atomic_write(cache, lambda f: torch.save({"train_x": train_x, "train_y": train_y, "test_x": test_x,
                                                  "test_y": test_y, "classes": classes}, f), durable=False)
    except OSError:
        pass  # the cache is an optimisation: a read-only results/ must not stop training
    return train_x, train_y, test_x, test_y, classes


def _decode(listing: dict[str, list[Path]], index: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) uint8 and (N,) labels; PIL decodes (torchvision.io's decoders are deprecated)."""
    images, labels = [], []
    for cls_name, files in listing.items():
        for f in files:
            try:
                with Image.open(f) as im:
                    img = np.asarray(im.convert("RGB"))  # (H, W, 3)
            except (OSError, UnidentifiedImageError) as e:
                raise undecodable(f, e) from None
            if images and img.shape != images[0].shape:
                raise ConfigError(f"{f} is {img.shape[1]}x{img.shape[0]}, other images are "
                                  f"{images[0].shape[1]}x{images[0].shape[0]}; all images must have one size")
            images.append(img)
            labels.append(index[cls_name])
    if not images:
        return torch.empty(0, 3, 0, 0, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels, dtype=torch.long)
