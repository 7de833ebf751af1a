"""`ablate bench [MODEL]`: training throughput of this trainer's hot loop vs a conventional loop.

ours          the trainer's step: uint8 dataset on the device, batched pad-crop-flip, randperm
              slices, channels_last model (bf16 autocast on CUDA), multi-tensor (foreach) SGD,
              the trainer's bookkeeping.
conventional  what most CIFAR scripts do: a torch DataLoader over a dataset of PIL images (as
              torchvision's CIFAR10: a uint8 array, one PIL image per __getitem__) with
              torchvision's per-image RandomCrop(32, 4), RandomHorizontalFlip, ToTensor and
              Normalize, feeding an eager NCHW fp32 model and torch.optim.SGD with its defaults.

Same process, same architecture and initial weights, same images and batch size. Timings on a
shared machine are noisy, so the two loops alternate (A B A B ...) after an untimed warm-up and
the medians are compared. Nothing here asserts a speed: tests never time anything.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from ..errors import ConfigError
from ..train.config import DataConfig, TrainConfig

# The shared CPU-scale subset (12k CIFAR-10 JPEGs) if this checkout sits beside it.
SHARED_SUBSET = ("shared/data/cifar10-jpeg-subset", "../shared/data/cifar10-jpeg-subset")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="resnet20", help="default: resnet20")
    p.add_argument("--dataset", metavar="NAME|PATH",
                   help="default: the shared cifar10-jpeg-subset if present, else synthetic")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per repeat (default: 10)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each loop, alternating (default: 5)")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps of each loop first (default: 3)")
    p.add_argument("--workers", type=int, default=0,
                   help="num_workers of the conventional loop's DataLoader (default: 0: on 2 cores a "
                        "worker process takes a core from the model)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def default_dataset() -> str:
    root = Path(__file__).resolve().parents[2]
    for rel in SHARED_SUBSET:
        if (root / rel / "train").is_dir():
            return str((root / rel).resolve())
    return "synthetic"


class PILImages(torch.utils.data.Dataset):
    """torchvision's CIFAR10 access pattern: a (N, H, W, 3) uint8 array, a PIL image per item."""

    def __init__(self, images_hwc, labels, transform) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def run(args) -> int:
    import torchvision.transforms as T

    import models
    from ..train.data import load_dataset
    from ..train.trainer import make_optimizer, memory_format, resolve_device, runtime, sync, train_step, use_amp

    for flag in ("batch_size", "steps", "repeats"):
        if getattr(args, flag) <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.workers < 0 or args.warmup_steps < 0:
        raise ConfigError("--workers and --warmup-steps must be >= 0")
    arch = models.resolve(args.model)
    cfg = TrainConfig(iterations=1, batch_size=args.batch_size, device=args.device, threads=args.threads).validate()
    device = resolve_device(cfg.device)
    name = args.dataset or default_dataset()
    data = load_dataset(DataConfig(name, val_size=0, subset=None if name != "synthetic" else 10_000), device)
    if len(data.train) < args.batch_size:
        raise ConfigError(f"{data.name} has {len(data.train)} training images, fewer than --batch-size {args.batch_size}")
    amp, fmt = use_amp(cfg, device), memory_format(cfg)

    with runtime(cfg, device):
        torch.manual_seed(0)
        ours_model = models.ResNet(arch, num_classes=data.num_classes)
        conv_model = models.ResNet(arch, num_classes=data.num_classes)
        conv_model.load_state_dict(ours_model.state_dict())  # same initial weights
        ours_model.to(device=device, memory_format=fmt)
        conv_model.to(device)
        ours_opt = make_optimizer(ours_model, cfg)
        conv_opt = torch.optim.SGD(conv_model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)  # the usual call: torch's defaults

        # -- ours: the trainer's hot loop -----------------------------------------------------
        gen = torch.Generator(device=device).manual_seed(0)
        n, bs = len(data.train), args.batch_size
        state = {"perm": torch.randperm(n, generator=gen, device=device), "pos": 0}
        loss_sum = torch.zeros((), device=device)
        wrong = torch.zeros((), device=device, dtype=torch.long)

        def ours(steps: int) -> None:
            nonlocal loss_sum, wrong
            for _ in range(steps):
                if state["pos"] + bs > n:
                    state["perm"], state["pos"] = torch.randperm(n, generator=gen, device=device), 0
                idx = state["perm"][state["pos"]:state["pos"] + bs]
                state["pos"] += bs
                x, y = data.batch(data.train, idx, gen)
                loss, w = train_step(ours_model, ours_opt, x.contiguous(memory_format=fmt), y, amp)
                loss_sum += loss * bs
                wrong += w
                if device.type == "cpu":
                    torch.isfinite(loss_sum).item()  # the trainer's per-step divergence check

        # -- conventional: DataLoader + PIL transforms + eager NCHW ---------------------------
        mean = data.train.images.float().mean((0, 2, 3)).div(255).tolist()
        std = data.train.images.float().std((0, 2, 3)).div(255).tolist()
        transform = T.Compose([T.RandomCrop(data.input_size, padding=4), T.RandomHorizontalFlip(),
                               T.ToTensor(), T.Normalize(mean, std)])
        pil = PILImages(data.train.images.permute(0, 2, 3, 1).cpu().numpy(), data.train.labels.cpu().numpy(), transform)
        loader = torch.utils.data.DataLoader(pil, batch_size=bs, shuffle=True, drop_last=True,
                                             num_workers=args.workers, persistent_workers=args.workers > 0,
                                             pin_memory=device.type == "cuda")
        batches = iter(loader)

        def conventional(steps: int) -> None:
            nonlocal batches
            conv_model.train()
            for _ in range(steps):
                try:
                    x, y = next(batches)
                except StopIteration:
                    batches = iter(loader)
                    x, y = next(batches)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                out = conv_model(x)
                loss = torch.nn.functional.cross_entropy(out, y)
                conv_opt.zero_grad()
                loss.backward()
                conv_opt.step()
                loss.item()  # the usual per-step `running_loss += loss.item()`

        def timed(fn) -> float:
            sync(device)
            start = time.perf_counter()
            fn(args.steps)
            sync(device)
            return args.steps * bs / (time.perf_counter() - start)

        ours_model.train()
        loops = {"ours": ours, "conventional": conventional}
        for fn in loops.values():
            fn(args.warmup_steps)
        rates: dict[str, list[float]] = {k: [] for k in loops}
        for _ in range(args.repeats):  # A B A B ...: drift on a shared machine hits both alike
            for key, fn in loops.items():
                rates[key].append(timed(fn))
        threads = torch.get_num_threads()

    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["ours"] / med["conventional"]
    labels = {"ours": f"ours (uint8 on {device.type}, batched aug, {'channels_last' if cfg.channels_last else 'NCHW'}"
                      f"{', bf16' if amp else ''})",
              "conventional": f"conventional (DataLoader num_workers={args.workers}, PIL transforms, eager NCHW)"}
    print(f"bench {args.model} on {data.name} ({n} train images), batch {bs}, {device}"
          f"{f', {threads} threads' if device.type == 'cpu' else ''}, {args.repeats} x {args.steps} steps per loop "
          f"(after {args.warmup_steps} warm-up), cpus={os.cpu_count()}, torch {torch.__version__}")
    width = max(len(v) for v in labels.values())
    print(f"{'loop':<{width}}  {'images/s (median)':>17}  repeats")
    for k in loops:
        print(f"{labels[k]:<{width}}  {med[k]:>17.1f}  {' '.join(f'{r:.1f}' for r in rates[k])}")
    print(f"ratio ours / conventional: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "dataset": data.name, "batch_size": bs,
                                               "device": str(device), "threads": threads, "workers": args.workers,
                                               "rates": rates, "median": med, "ratio": ratio}, indent=2))
    return 0
