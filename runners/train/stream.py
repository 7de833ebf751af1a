"""Image folders too large to hold: decoded per batch by DataLoader worker processes.

    data = load_dataset(DataConfig("/data/imagenet", loader="stream", crop=224, scale=[256, 480]))
    for x, y in data.train_batches(epoch, 256, gen, seed=0, rank=r, world=w): ...

The in-memory path (runners/train/data.py) decodes a folder once into one uint8 tensor; that is
right for CIFAR and impossible for ImageNet's 1.28M images (~400 GB decoded). Here each worker
opens, decodes (PIL) and crops its images and hands over uint8 crops in pinned memory; the
device then converts, jitters the colours, adds the lighting noise and normalises the whole batch. The split is the
in-memory path's (`images.split_indices`, the same listing order), so both hold out the same images,
and without augmentation both yield the same images in the same order.

Determinism: an epoch's order is a permutation drawn from (seed, epoch), and every random choice
made for an image (scale, crop, flip, colour, lighting) from (seed, epoch, index). So the batches do not
depend on the number of workers, and rank r of w gets the r-th contiguous slice of each global
batch: the ranks' slices put together are the single-process batch (`epoch_batches`).

Decoding where: on the CPU, in the workers: JPEGs by torchvision.io.decode_jpeg, the resizing
and cropping on the uint8 tensor (torchvision.transforms.v2). Measured here on one idle core for
500x375 JPEGs (README), the training transform runs at ~1,000 img/s that way, ~560 img/s with
PIL's decode and ~360 img/s with PIL's decode and resize. nvjpeg on the GPU could not be
measured here, and would still leave the per-image resize of images of every size to the
device (and compete with the training for it); the workers scale with the cores.

Augmentation (He 2016a Sec. 3.4; DataConfig): crop_mode scale resizes the shorter side to a size
uniform in dataset.scale (bicubic, as fb.resnet.torch) and takes a random crop x crop window;
random_resized is torchvision's RandomResizedCrop (area 8-100%, aspect 3/4-4/3, bilinear). Both
flip half the images; lighting adds AlexNet's PCA noise with fb.resnet.torch's ImageNet
eigenvectors; color_jitter is fb.resnet.torch's ColorJitter (its blends, unclamped, on [0, 1]
pixels before the lighting), drawn per image in the worker and applied to the batch on the device.
Evaluation resizes the shorter side to dataset.resize and takes the center crop,
or with ten_crop the four corners, the center and their flips (the paper's 10-crop testing);
multi_scale scores whole images at several shorter sides (Table 4, `multiscale_views`).

torchvision (2.5 s to import after torch) is imported where an image is decoded or resized, in the
loader's workers: the in-memory path loads this module to choose a loader and needs none of it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError
from ..files import atomic_write
from ..paths import results_dir
from .config import DataConfig
from .images import epoch_permutation, list_imagefolder, shard, split_indices, statistics, undecodable

MEMORY_LIMIT = 4 << 30  # decoded bytes above which `loader: auto` streams (CIFAR-10: 184 MB)
MAX_WORKERS = 8  # per rank, when not given: enough to feed one GPU at 224 px on most CPUs
PREFETCH = 4  # batches each worker keeps ready
# AlexNet's PCA lighting, with the eigen-decomposition of ImageNet's RGB covariance in [0, 1]
# units that fb.resnet.torch (datasets/imagenet.lua) uses.
EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]])


def too_large(listing: dict) -> bool:
    """Whether the folder's images, decoded as uint8 at the first image's size, exceed MEMORY_LIMIT."""
    first = next(f for files in listing["train"].values() for f in files)
    w, h = _size(first)
    count = sum(len(files) for split in listing.values() for files in split.values())
    return count * 3 * w * h > MEMORY_LIMIT


def _size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except (OSError, UnidentifiedImageError) as e:
        raise undecodable(path, e) from None


@dataclass
class StreamSplit:
    """Image paths and labels (N,) int64; indices as in data.Split (positions in the train listing)."""

    files: list[Path]
    labels: torch.Tensor
    indices: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.files)


def _read(loader: torch.utils.data.DataLoader):
    """`loader`'s batches. A file that will not decode raises ConfigError in a DataLoader worker,
    which torch raises again here with the worker's traceback as its message: given back as the
    one line it was (the last of that traceback)."""
    try:
        yield from loader
    except ConfigError as e:
        lines = str(e).strip().splitlines()
        if len(lines) > 1 and lines[0].startswith("Caught ConfigError"):
            raise ConfigError(lines[-1].split("ConfigError: ", 1)[-1]) from None
        raise


# -- what a worker does with one image ------------------------------------------------------------
def _open(path: Path) -> torch.Tensor:
    """uint8 (3, H, W) contiguous. JPEGs by torchvision.io (libjpeg-turbo: pixel-identical to
    PIL's decode, which the in-memory path uses, and 1.8x faster with the resize, README), other
    files, and JPEGs it refuses, by PIL. torchvision 0.29 deprecates torchvision.io's decoders
    for torchcodec; once they are gone, PIL does all of it."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        try:
            from torchvision.io import ImageReadMode, decode_jpeg, read_file
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
        except (ImportError, RuntimeError):
            pass
    try:
        with Image.open(path) as im:
            # contiguous: torchvision's bicubic resize of the HWC-strided view is ~4x slower
            return torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()
    except (OSError, UnidentifiedImageError) as e:
        raise undecodable(path, e) from None


def _resize_shorter(x: torch.Tensor, side: int, bicubic: bool = False) -> torch.Tensor:
    """Resize uint8 (3, H, W) so its shorter side is `side` (antialiased, on the tensor: 2.4x
    faster than PIL's resize for ImageNet-sized images, README)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize
    h, w = x.shape[1:]
    if min(h, w) == side:
        return x
    size = [side, max(1, round(w * side / h))] if h <= w else [max(1, round(h * side / w)), side]
    mode = InterpolationMode.BICUBIC if bicubic else InterpolationMode.BILINEAR
    return resize(x, size, interpolation=mode, antialias=True)


def _random_resized_box(h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a window with 8-100% of the area and aspect 3/4-4/3
    (torchvision's RandomResizedCrop); after 10 misses, the largest centered window in range."""
    for _ in range(10):
        target = h * w * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    ratio = w / h
    cw, ch = (w, round(w / (4 / 3))) if ratio > 4 / 3 else (round(h * 3 / 4), h) if ratio < 3 / 4 else (w, h)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _crop(x: torch.Tensor, top: int, left: int, c: int) -> torch.Tensor:
    return x[:, top:top + c, left:left + c]


class TrainImages(torch.utils.data.Dataset):
    """Item (index, epoch) -> (uint8 (3, c, c) crop, label, lighting alpha (3,), colour jitter (6,):
    the brightness, contrast and saturation factors, then their order); all randomness from
    (seed, epoch, index), so it does not matter which worker or rank decodes it."""

    def __init__(self, split: StreamSplit, cfg: DataConfig, seed: int) -> None:
        self.split, self.cfg, self.seed = split, cfg, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]):
        i, epoch = item
        cfg = self.cfg
        x = _open(self.split.files[i])
        alpha, jitter = torch.zeros(3), torch.tensor([1.0, 1.0, 1.0, 0, 1, 2])
        if not cfg.augment:
            return _eval_crop(x, cfg), self.split.labels[i], alpha, jitter
        rng = np.random.default_rng([self.seed, epoch, i])
        c = cfg.crop
        if cfg.crop_mode == "random_resized" and c is not None:
            from torchvision.transforms.v2.functional import resized_crop
            x = resized_crop(x, *_random_resized_box(*x.shape[1:], rng), [c, c], antialias=True)
        else:
            if cfg.scale is not None:  # bicubic, as fb.resnet.torch's RandomScale
                x = _resize_shorter(x, int(rng.integers(cfg.scale[0], cfg.scale[1] + 1)), bicubic=True)
            if c is not None:
                h, w = x.shape[1:]
                if min(h, w) < c:
                    raise ConfigError(f"{self.split.files[i]} is {w}x{h}, smaller than dataset.crop {c}; "
                                      "set dataset.scale or dataset.resize")
                x = _crop(x, int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1)), c)
        if rng.random() < 0.5:
            x = x.flip(-1)
        if cfg.lighting > 0:
            alpha = torch.from_numpy(rng.normal(0.0, cfg.lighting, 3)).float()
        if cfg.color_jitter > 0:
            factors = rng.uniform(1 - cfg.color_jitter, 1 + cfg.color_jitter, 3)
            jitter = torch.from_numpy(np.concatenate([factors, rng.permutation(3)])).float()
        return x.contiguous(), self.split.labels[i], alpha, jitter


GRAY = (0.299, 0.587, 0.114)  # fb.resnet.torch's grayscale weights


def color_jitter(x: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """fb.resnet.torch's ColorJitter on a float batch (N, 3, H, W) in [0, 1]: blend each image with
    black (brightness), its mean gray (contrast) or its gray image (saturation) by the factors
    jitter[:, :3], in the order jitter[:, 3:] (0, 1, 2 = brightness, contrast, saturation).
    Unclamped, as there. Whole-batch ops with per-image choices: no host sync."""
    factors, order = jitter[:, :3].to(x.dtype), jitter[:, 3:].long()
    w = torch.tensor(GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    for step in range(3):
        op = order[:, step].view(-1, 1, 1, 1)
        a = factors.gather(1, order[:, step:step + 1]).view(-1, 1, 1, 1)
        gray = (x * w).sum(1, keepdim=True)  # (N, 1, H, W)
        target = torch.where(op == 2, gray, torch.where(op == 1, gray.mean((2, 3), keepdim=True), 0.0))
        x = x * a + target * (1 - a)
    return x


def _eval_crop(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """The shorter side resized to dataset.resize, then the center crop."""
    if cfg.resize is not None:
        x = _resize_shorter(x, cfg.resize)
    if cfg.crop is None:
        return x
    (h, w), c = x.shape[1:], cfg.crop
    if min(h, w) < c:
        raise ConfigError(f"an image of {w}x{h} is smaller than dataset.crop {c}; set dataset.resize")
    return _crop(x, (h - c) // 2, (w - c) // 2, c).contiguous()


class EvalImages(torch.utils.data.Dataset):
    """Item i -> (uint8 (3, c, c), label), or (10, 3, c, c) with ten_crop: corners, center, flips."""

    def __init__(self, split: StreamSplit, cfg: DataConfig) -> None:
        self.split, self.cfg = split, cfg

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        x = _open(self.split.files[i])
        if not self.cfg.ten_crop:
            return _eval_crop(x, self.cfg), self.split.labels[i]
        if self.cfg.resize is not None:
            x = _resize_shorter(x, self.cfg.resize)
        (h, w), c = x.shape[1:], self.cfg.crop
        corners = [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), ((h - c) // 2, (w - c) // 2)]
        crops = torch.stack([_crop(x, top, left, c) for top, left in corners])  # (5, 3, c, c)
        return torch.cat([crops, crops.flip(-1)]), self.split.labels[i]


class MultiScaleImages(torch.utils.data.Dataset):
    """Item i -> ([uint8 (3, H_s, W_s) per scale, the shorter side resized to each], label): whole
    images, not crops, for He 2016a Table 4's fully-convolutional testing (evaluation.py)."""

    def __init__(self, split: StreamSplit, scales: tuple[int, ...]) -> None:
        self.split, self.scales = split, scales

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        x = _open(self.split.files[i])
        return [_resize_shorter(x, s).contiguous() for s in self.scales], int(self.split.labels[i])


# -- the order of an epoch ------------------------------------------------------------------------
class EpochBatches(torch.utils.data.Sampler):
    """Rank's share of each global batch of an epoch, as lists of (index, epoch).

    The permutation is images.epoch_permutation(seed, epoch), the in-memory path's (and
    DistributedSampler's rule, with each global batch split into contiguous rank slices); the last
    partial global batch is dropped, as schedule.Plan counts.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise ConfigError(f"train.batch_size ({batch_size}) must be divisible by the {world} processes")
        self.n, self.batch_size, self.seed, self.rank, self.world, self.epoch = n, batch_size, seed, rank, world, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, self.n // self.batch_size)

    def __iter__(self):
        perm = epoch_permutation(self.n, self.seed, self.epoch).tolist()
        local = self.batch_size // self.world
        for s in range(len(self)):
            start = s * self.batch_size + self.rank * local
            yield [(i, self.epoch) for i in perm[start:start + local]]


# -- the dataset ----------------------------------------------------------------------------------
@dataclass
class StreamDataset:
    """The interface of data.Dataset (train/val/test, classes, mean/std, batches), streamed."""

    name: str
    train: StreamSplit
    val: StreamSplit
    test: StreamSplit
    classes: list[str]
    mean: torch.Tensor  # float32 [0, 1] units: (3, c, c) per-pixel or (3, 1, 1) per-channel
    std: torch.Tensor
    config: DataConfig
    input_size: int
    device: torch.device = torch.device("cpu")
    workers: int = 0
    _loaders: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> "StreamDataset":
        device = torch.device(device)
        if device == self.device:
            return self
        return dataclasses.replace(self, device=device, mean=self.mean.to(device), std=self.std.to(device),
                                   _loaders={})

    def with_workers(self, workers: int) -> "StreamDataset":
        return self if workers == self.workers else dataclasses.replace(self, workers=workers, _loaders={})

    def _loader(self, key, dataset, **kw) -> torch.utils.data.DataLoader:
        if key not in self._loaders:
            w = self.workers
            self._loaders[key] = torch.utils.data.DataLoader(
                dataset, num_workers=w, pin_memory=self.device.type == "cuda",
                prefetch_factor=PREFETCH if w else None, persistent_workers=w > 0, **kw)
        return self._loaders[key]

    def normalize(self, images: torch.Tensor, alpha: torch.Tensor | None = None,
                  jitter: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32, colour-jittered by `jitter` (N, 6), plus the lighting
        noise of `alpha` (N, 3), normalised: (x / 255 + rgb - mean) / std as the in-memory path's
        one multiply-add, so that without colour augmentation the two paths give the same floats."""
        x = images.float()
        scale, shift = 1 / (255 * self.std), -self.mean / self.std
        if jitter is not None and self.config.color_jitter > 0:
            x = color_jitter(x.mul_(1 / 255), jitter.to(x.device))
            scale = 1 / self.std
        if alpha is not None and self.config.lighting > 0:
            rgb = (alpha * EIGVAL.to(x.device)) @ EIGVEC.to(x.device).T  # (N, 3): eigvec @ (alpha * eigval)
            shift = shift + rgb[:, :, None, None] / self.std
        return torch.addcmul(shift, x, scale, out=x)

    def train_batches(self, epoch: int, batch_size: int, generator=None, *, seed: int = 0,
                      rank: int = 0, world: int = 1):
        """Rank's slice of each global batch of `epoch` (1-based), augmented, on the device."""
        key = ("train", batch_size, seed, rank, world)
        sampler = EpochBatches(len(self.train), batch_size, seed, rank, world)
        loader = self._loader(key, TrainImages(self.train, self.config, seed), batch_sampler=sampler)
        loader.batch_sampler.set_epoch(epoch)
        for x, y, alpha, jitter in _read(loader):
            x = x.to(self.device, non_blocking=True)
            alpha, jitter = alpha.to(self.device, non_blocking=True), jitter.to(self.device, non_blocking=True)
            yield (self.normalize(x, alpha, jitter),
                   y.to(self.device, non_blocking=True))

    def eval_batches(self, split: StreamSplit, batch_size: int, rank: int = 0, world: int = 1):
        """(x, y) of rank's contiguous shard of `split`; x is (N, 10, 3, c, c) with ten_crop."""
        lo, hi = shard(len(split), rank, world)
        which = "val" if split is self.val else "test" if split is self.test else "train"
        loader = self._loader(("eval", which, batch_size, rank, world), EvalImages(split, self.config),
                              sampler=range(lo, hi), batch_size=batch_size)
        for x, y in _read(loader):
            x = x.to(self.device, non_blocking=True)
            shape = x.shape
            x = self.normalize(x.flatten(0, x.dim() - 4)).view(shape)
            yield x, y.to(self.device, non_blocking=True)

    def multiscale_views(self, split: StreamSplit, scales: tuple[int, ...], flip: bool = True):
        """Per image of `split`: ([float (V, 3, H_s, W_s) per scale: the image, and its mirror with
        `flip`], label), on the device. Normalised per channel: a per-pixel mean is a mean crop,
        and its average over the positions is the mean of an image of any size."""
        mean = self.mean.mean((1, 2), keepdim=True)
        loader = torch.utils.data.DataLoader(MultiScaleImages(split, tuple(scales)), batch_size=None,
                                             num_workers=self.workers, pin_memory=self.device.type == "cuda")
        for images, y in _read(loader):
            views = []
            for x in images:
                x = (x.to(self.device, non_blocking=True).float()[None] / 255 - mean) / self.std
                views.append(torch.cat([x, x.flip(-1)]) if flip else x)
            yield views, y

    def summary(self) -> str:
        crops = "10-crop" if self.config.ten_crop else "center crop"
        return (f"{self.name}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test, "
                f"{self.num_classes} classes, {self.input_size}x{self.input_size} ({crops} eval), "
                f"{self.config.normalize}, streamed by {self.workers} workers")


def default_workers(world_local: int = 1) -> int:
    """Decoding processes per rank: the cores shared among this node's ranks, at most MAX_WORKERS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(MAX_WORKERS, cores // max(1, world_local) - 1))


def load_stream(cfg: DataConfig, listing: dict, device: torch.device | str = "cpu") -> StreamDataset:
    """Split the listing as the in-memory path does and take the normalisation statistics."""
    root = Path(cfg.name).expanduser()
    classes = sorted(listing["train"])
    index = {c: i for i, c in enumerate(classes)}

    def flat(split: str) -> tuple[list[Path], torch.Tensor]:
        pairs = [(f, index[c]) for c, files in listing[split].items() for f in files]
        return [p for p, _ in pairs], torch.tensor([y for _, y in pairs], dtype=torch.long)

    files, labels = flat("train")
    train_idx, val_idx = split_indices(len(files), cfg, root.name)
    test_files, test_labels = flat("test")
    if not test_files:
        raise ConfigError(f"{root / 'test'} holds no images; an ImageFolder root holds train/ and test/")
    train = StreamSplit([files[i] for i in train_idx.tolist()], labels[train_idx], train_idx)
    val = StreamSplit([files[i] for i in val_idx.tolist()], labels[val_idx], val_idx)
    test = StreamSplit(test_files, test_labels)
    size = cfg.crop if cfg.crop is not None else _size(files[0])[0]
    mean, std = _stream_statistics(cfg, train, root)
    data = StreamDataset(root.name, train, val, test, classes, mean, std, cfg, size, workers=default_workers())
    return data.to(device)


def _stream_statistics(cfg: DataConfig, train: StreamSplit, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The in-memory path's statistics, over the evaluation crops of `stats_images` training
    images drawn by split_seed (all of them when there are fewer): ImageNet's mean image from
    10k images costs seconds, from 1.2M an hour. Cached under results/cache/ by what decides it."""
    n = min(len(train), cfg.stats_images)
    key = hashlib.sha1(repr((str(root.resolve()), len(train), str(train.files[0]), str(train.files[-1]), n,
                             cfg.split_seed, cfg.subset, cfg.val_size, cfg.resize, cfg.crop,
                             cfg.normalize)).encode()).hexdigest()[:16]
    cache = results_dir() / "cache" / f"stream-stats-{root.name}-{key}.pt"
    if cache.exists():
        try:
            d = torch.load(cache, weights_only=True)
            return d["mean"], d["std"]
        except Exception:  # noqa: BLE001 - a damaged cache is recomputed, never trusted
            pass
    pick = torch.arange(len(train)) if n == len(train) else \
        torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.split_seed))[:n].sort().values
    sample = StreamSplit([train.files[i] for i in pick.tolist()], train.labels[pick])
    plain = dataclasses.replace(cfg, ten_crop=False)
    loader = torch.utils.data.DataLoader(EvalImages(sample, plain), batch_size=256, num_workers=default_workers())
    try:
        images = torch.cat([x for x, _ in _read(loader)])
    except RuntimeError as e:  # torch.stack of images of different sizes
        raise ConfigError(f"{root}: images differ in size; set dataset.crop (and dataset.resize) to stream "
                          f"them ({str(e).splitlines()[0][:80]})") from None
    mean, std = statistics(images, cfg.normalize)
    try:
        atomic_write(cache, lambda f: torch.save({"mean": mean, "std": std}, f), durable=False)
    except OSError:
        pass  # an optimisation: a read-only results/ must not stop training
    return mean, std


# -- a small image folder for CPU-scale runs ------------------------------------------------------
def upscale_folder(src: str | Path, dst: str | Path, size: int, per_class: int | None = None) -> Path:
    """Copy the ImageFolder `src` to `dst` with every image resized to size x size (bicubic,
    JPEG quality 95), keeping at most `per_class` images of each class and split. An existing
    complete copy is kept. For the CPU-scale ImageNet-recipe spec (ablations/he2016a-imagenet-cpu.yaml):
    the shared 32 px CIFAR JPEGs at 64-96 px exercise scaling, cropping and 10-crop testing."""
    src, dst = Path(src), Path(dst)
    done = dst / ".complete"
    if done.exists():
        return dst
    for split, classes in list_imagefolder(src).items():
        for cls_name, files in classes.items():
            out = dst / split / cls_name
            out.mkdir(parents=True, exist_ok=True)
            for f in files[:per_class]:
                target = out / (f.stem + ".jpg")
                if not target.exists():
                    with Image.open(f) as im:
                        im.convert("RGB").resize((size, size), Image.BICUBIC).save(target, quality=95)
    done.touch()
    return dst
