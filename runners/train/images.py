"""What both loaders share (the in-memory one, runners/train/data.py, and the streamed one,
runners/train/stream.py): an image folder's listing, the train/val split, each epoch's order, a
rank's shard, the normalisation statistics, and the one error for a file that will not decode.

Both loaders list a folder here in the same order (class, then file name) and split it here
with the same seed, so they hold out exactly the same validation images; both take an epoch's
order from `epoch_permutation`, so a resumed run, every rank and both paths agree.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .config import DataConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IMAGEFOLDER_HINT = "an ImageFolder root holds train/<class>/<image> and test/<class>/<image>"


def list_imagefolder(root: Path) -> dict[str, dict[str, list[Path]]]:
    """{"train"|"test": {class: sorted image paths}}, classes sorted; ConfigError if malformed.
    The order here (class, then file name) is the order of the training images both paths use."""
    if not root.is_dir():
        raise ConfigError(f"dataset path {root} does not exist; give cifar10, cifar100, synthetic or the "
                          f"path of an ImageFolder root (it holds train/<class>/<image> and test/<class>/<image>)")
    listing = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise ConfigError(f"{root} has no {split}/ folder; {IMAGEFOLDER_HINT}")
        listing[split] = {d.name: _images(d) for d in sorted(folder.iterdir()) if d.is_dir()}
    classes = sorted(listing["train"])
    if not classes or not any(listing["train"].values()):
        raise ConfigError(f"{root / 'train'} holds no class folders with images; {IMAGEFOLDER_HINT}")
    unknown = sorted(set(listing["test"]) - set(classes))
    if unknown:
        raise ConfigError(f"{root / 'test'} has classes missing from train/: {', '.join(unknown[:5])}")
    return listing


def _images(folder: Path) -> list[Path]:
    """A class folder's images, sorted: its entries named like one (IMAGE_SUFFIXES); any other
    (notes.txt, a subfolder) is not an image and is passed over. What is named like an image must
    be one: a directory so named is refused here, a file that will not decode where it is read
    (`undecodable`). os.scandir tells a directory without a stat per file (ImageNet: 1.28M)."""
    with os.scandir(folder) as entries:
        named = [e for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES]
    for e in named:
        if e.is_dir():
            raise ConfigError(f"{e.path} is a directory named like an image; rename it or move it out of "
                              f"its class folder ({IMAGEFOLDER_HINT})")
    return sorted(Path(e.path) for e in named)


def undecodable(path: Path, error: Exception) -> ConfigError:
    """The one-line error for a file named like an image that cannot be read as one (empty,
    broken or mislabelled)."""
    try:
        empty = path.stat().st_size == 0
    except OSError:
        empty = False
    reason = "the file is empty" if empty else error.strerror if isinstance(error, OSError) and error.strerror \
        else (str(error).splitlines() or [type(error).__name__])[0][:120]
    return ConfigError(f"cannot decode {path}: {reason}; remove it or replace it with the image (in a class "
                       f"folder every file named {'/'.join(sorted(IMAGE_SUFFIXES))} is read as one)")


def split_indices(n: int, cfg: DataConfig, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) positions among a source's n training images, sorted: `subset` images drawn
    and `val_size` of them held out, both by `split_seed` alone."""
    keep = n if cfg.subset is None else cfg.subset
    if keep > n:
        raise ConfigError(f"dataset.subset ({cfg.subset}) exceeds the {n} training images of {name}")
    if cfg.val_size >= keep:
        raise ConfigError(f"dataset.val_size ({cfg.val_size}) must be smaller than the {keep} training "
                          f"images of {name}; lower --val-size")
    g = torch.Generator().manual_seed(cfg.split_seed)
    perm = torch.randperm(n, generator=g)[:keep]
    return perm[cfg.val_size:].sort().values, perm[:cfg.val_size].sort().values


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the training images in `epoch` (1-based): a function of (seed, epoch) alone,
    so a resumed run, every rank and both data paths agree without sharing state."""
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(mixed))


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous share of n items; the shares differ by at most one."""
    return n * rank // world, n * (rank + 1) // world


def statistics(images: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean (the paper's) or per-channel mean and std of uint8 images, in [0, 1] units.

    Summed in float64 chunks: a float copy of all 45k CIFAR images would take 550 MB.
    """
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    squares = torch.zeros(images.shape[1:], dtype=torch.float64)
    for chunk in images.split(4096):
        chunk = chunk.double() / 255
        total += chunk.sum(0)
        squares += chunk.square().sum(0)
    n = images.shape[0]
    if kind == "pixel_mean":
        return (total / n).float(), torch.ones(3, 1, 1)
    count = n * images.shape[2] * images.shape[3]
    mean = total.sum((1, 2)) / count
    std = (squares.sum((1, 2)) / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.float().view(3, 1, 1), std.float().view(3, 1, 1)
