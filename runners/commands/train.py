"""`ablate train MODEL`: train one model with the paper's recipe and log it to MLflow.

    ablate train resnet20 --dataset ../shared/data/cifar10-jpeg-subset --epochs 8 --val-size 1000
    ablate train plain56 --shortcut B --warmup --iterations 64000      # the paper's length
    ablate train resnet20 --set train.schedule=cosine --set data.normalize=channel
    ablate train resnet50 --dataset /data/imagenet --nproc-per-node 8    # He 2016a's ImageNet recipe

The recipe is a named preset under the explicit values (--recipe; auto: he2016a-imagenet for the
imagenet family, he2016a-cifar otherwise), printed and logged as train.recipe.

Everything is validated, the data loaded and the model built before an MLflow run exists, so bad
input costs one line on stderr (exit 2) and leaves the store untouched. Each epoch is
checkpointed under results/checkpoints/<model>-<hash of the resolved config>/, so rerunning the
same command after an interruption resumes there (in a new MLflow run holding the full curves).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from models.spec import BLOCKS, ORDERS, PADS, SHORTCUTS, ArchSpec

from ..errors import ConfigError, redact, shown
from ..paths import default_tracking_uri, results_dir
from ..train.config import BUILTIN_DATASETS, DataConfig, TrainConfig, apply_recipe, from_mapping
from ..yaml_input import parse_override, set_path

DEFAULT_EXPERIMENT = "ablate-train"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a registered name (see `ablate models`) or [preact-](resnet|plain)<6n+2>")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="cifar10", metavar="NAME|PATH",
                   help="cifar10, cifar100, synthetic, or an ImageFolder root with train/ and test/ (default: cifar10)")
    d.add_argument("--data-root", metavar="DIR", help="where cifar10/cifar100 are downloaded (default: data)")
    d.add_argument("--subset", type=int, metavar="N", help="use N training images (before the val split)")
    d.add_argument("--val-size", type=int, metavar="N", help="validation images held out of train (default: 5000)")
    d.add_argument("--split-seed", type=int, metavar="S", help="fixes the subset and val split (default: 0)")
    d.add_argument("--normalize", choices=["pixel_mean", "channel"],
                   help="subtract the per-pixel mean (the paper, default) or standardise per channel")
    d.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="no padding, cropping or flipping")
    d.add_argument("--loader", choices=["auto", "memory", "stream"],
                   help="hold the decoded images (memory) or decode per batch in workers (stream); "
                        "auto: stream large folders and per-image resizing")
    d.add_argument("--ten-crop", action="store_true", default=None,
                   help="evaluate on 10 crops (corners, center, flips), He 2016a's testing")

    t = p.add_argument_group("recipe (default: He et al. 2016a's CIFAR recipe, 64k iterations)")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, metavar="N")
    length.add_argument("--iterations", type=int, metavar="N")
    t.add_argument("--batch-size", type=int, metavar="B", help="default: 128")
    t.add_argument("--lr", type=float, help="default: 0.1")
    t.add_argument("--momentum", type=float, help="default: 0.9")
    t.add_argument("--weight-decay", type=float, help="default: 1e-4")
    t.add_argument("--nesterov", action="store_true", default=None)
    t.add_argument("--schedule", choices=["step", "cosine", "constant", "plateau"],
                   help="default: step; plateau: divide by --gamma when the validation error stops improving")
    t.add_argument("--milestones", type=_floats, metavar="M1,M2",
                   help="step schedule, in the run's unit (default: 1/2 and 3/4 of the run)")
    t.add_argument("--gamma", type=float, help="lr factor at each milestone (default: 0.1)")
    t.add_argument("--warmup", action="store_true", default=None,
                   help="lr --warmup-lr until the training error is below --warmup-until-error (ResNet-110)")
    t.add_argument("--warmup-lr", type=float, help="default: 0.01")
    t.add_argument("--warmup-until-error", type=float, metavar="E", help="default: 0.8")
    t.add_argument("--seed", type=int, help="initialisation and data order (default: 0)")
    t.add_argument("--recipe", choices=["auto", "he2016a-cifar", "he2016a-imagenet", "torchvision-imagenet"],
                   help="preset under the values given here (default auto: by the model family)")

    e = p.add_argument_group("execution")
    e.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    e.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic algorithms: a resumed run ends with the same numbers")
    e.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    e.add_argument("--amp", choices=["auto", "bf16", "off"], help="auto: bf16 on CUDA, off on CPU")
    e.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None)
    e.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: all cores)")
    e.add_argument("--eval-batch-size", type=int, metavar="B")
    e.add_argument("--no-probe", dest="probe", action="store_false", default=None,
                   help="skip the layer-response probe (He 2016a Fig. 7) after training")
    e.add_argument("--workers", type=int, metavar="N", help="streamed data: decoding processes per rank")
    e.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="train on N local processes (GPUs) with DDP; the batch is the global batch")
    e.add_argument("--sync-bn", action="store_true", default=None,
                   help="with several processes: BN statistics over the global batch")

    a = p.add_argument_group("architecture overrides")
    a.add_argument("--shortcut", choices=SHORTCUTS, help="none (plain), He 2016a's A/B/C, He 2016b Table 1's kinds")
    a.add_argument("--preact", action=argparse.BooleanOptionalAction, default=None,
                   help="full pre-activation (He 2016b); the same as --order preact")
    a.add_argument("--order", choices=ORDERS, help="activation order, He 2016b Fig. 4 (a)-(e)")
    a.add_argument("--width", type=float)
    a.add_argument("--depth", type=int)
    a.add_argument("--block", choices=BLOCKS)
    a.add_argument("--zero-init-last", action=argparse.BooleanOptionalAction, default=None)
    a.add_argument("--pad", choices=PADS, help="option A's zero channels: appended (fb.resnet.torch) or split")
    a.add_argument("--shortcut-scale", type=float, help="shortcut=scale: the shortcut's factor (default 0.5)")
    a.add_argument("--branch-scale", type=float, help="shortcut=scale: the residual branch's factor (default 0.5)")
    a.add_argument("--gate-bias", type=float, help="shortcut=gate|shortcut-gate: the gate's initial b_g (default -6)")
    a.add_argument("--shortcut-dropout", type=float, help="shortcut=dropout: the drop probability (default 0.5)")
    a.add_argument("--bn-batch", type=int, metavar="N", help="ghost BN: statistics over sub-batches of N images")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any field: arch.F (or bare F), train.F or data.F; VALUE is YAML (repeatable)")

    m = p.add_argument_group("tracking and checkpoints")
    m.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default: {DEFAULT_EXPERIMENT})")
    m.add_argument("--run-name", help="default: <model>-<dataset>-s<seed>")
    m.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db")
    m.add_argument("--checkpoint-dir", metavar="DIR",
                   help="default: results/checkpoints/<model>-<hash of the resolved config>")
    m.add_argument("--fresh", action="store_true", help="discard the checkpoint and start over")
    m.add_argument("--no-checkpoint", action="store_true", help="keep no checkpoint (no resume)")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def resolve_configs(args) -> tuple[str, ArchSpec, TrainConfig, DataConfig]:
    """(model name, arch, recipe, data) from the command line; ConfigError on any bad value."""
    import models
    arch_over = {k: getattr(args, k) for k in ("shortcut", "preact", "order", "width", "depth", "block",
                                                 "zero_init_last", "pad", "shortcut_scale", "branch_scale",
                                                 "gate_bias", "shortcut_dropout", "bn_batch")}
    train_map = {k: getattr(args, k) for k in (
        "epochs", "iterations", "batch_size", "lr", "momentum", "weight_decay", "nesterov", "schedule",
        "milestones", "gamma", "warmup", "warmup_lr", "warmup_until_error", "seed", "device",
        "deterministic", "compile", "amp", "channels_last", "threads", "eval_batch_size", "probe",
        "recipe", "workers", "sync_bn")}
    dataset = args.dataset
    if dataset not in BUILTIN_DATASETS:  # a path: absolute, so the config (and its hash) is cwd-free
        dataset = str(Path(dataset).expanduser().resolve())
    data_map = {"name": dataset, "root": args.data_root, "subset": args.subset, "val_size": args.val_size,
                "split_seed": args.split_seed, "normalize": args.normalize, "augment": args.augment,
                "loader": args.loader, "ten_crop": args.ten_crop}
    sections = {"arch": arch_over, "train": train_map, "data": data_map}
    for item in args.set:  # the grammar of `ablate run --set`; a bare FIELD is arch.FIELD
        parts, value = parse_override(item)
        if len(parts) == 1:
            parts = ["arch", *parts]
        if parts[0] not in sections:
            raise ConfigError(f"--set {shown(item)}: the key must be arch.FIELD (or FIELD), train.FIELD or data.FIELD")
        set_path(sections, parts, value, item)
    if train_map["epochs"] is not None and train_map["iterations"] is not None:
        raise ConfigError("give --epochs or --iterations, not both")
    arch = models.resolve(args.model, **arch_over)
    train_map, data_map = apply_recipe(arch.family, train_map, data_map)
    train_cfg = from_mapping(TrainConfig, {k: v for k, v in train_map.items() if v is not None}, "train")
    data_cfg = from_mapping(DataConfig, {k: v for k, v in data_map.items() if v is not None}, "dataset")
    return args.model, arch, train_cfg, data_cfg


def default_checkpoint_dir(name: str, arch: ArchSpec, train_cfg: TrainConfig, data_cfg: DataConfig) -> Path:
    from ..train.checkpoint import config_signature
    key = json.dumps(config_signature(arch, train_cfg, data_cfg), sort_keys=True, default=str)
    return results_dir() / "checkpoints" / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def run(args) -> int:
    from ..train import distributed
    name, arch, train_cfg, data_cfg = resolve_configs(args)
    if args.nproc_per_node > 1 and not distributed.launched():
        # Everything a process would refuse is refused here, in one line, before any starts.
        distributed.local_batch(train_cfg.batch_size, args.nproc_per_node)
        prepare(args, name, arch, train_cfg, data_cfg, distributed.Context())
        return distributed.launch(args.nproc_per_node, args.argv)
    from ..train.execution import resolve_device
    ctx = distributed.init(resolve_device(train_cfg.device))
    try:
        code = _train(args, name, arch, train_cfg, data_cfg, ctx)
        distributed.barrier(ctx)  # rank 0 closes its MLflow run after train(): leave together
        return code
    finally:
        distributed.finish()


def prepare(args, name, arch, train_cfg, data_cfg, ctx):
    """(data, model info, checkpoint dir, the finished checkpoint or None), all validated.
    --fresh deletes the checkpoint on rank 0 before any rank reads it."""
    import torch

    import models

    from ..train import distributed
    from ..train.data import load_dataset
    from ..train.checkpoint import CHECKPOINT, check_signature, config_signature, load_checkpoint
    from ..train.execution import resolve_device
    device = resolve_device(train_cfg.device)
    data = load_dataset(data_cfg, device)
    with torch.device("meta"):  # shapes only: the size report costs no memory or initialisation
        info = models.describe(models.ResNet(arch, num_classes=data.num_classes))
    ckpt_dir, saved = None, None
    if not args.no_checkpoint:
        ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else default_checkpoint_dir(name, arch, train_cfg, data_cfg)
        path = ckpt_dir / CHECKPOINT
        if args.fresh and ctx.is_main and path.exists():
            path.unlink()
        distributed.barrier(ctx)
        saved = load_checkpoint(path)
        if saved is not None:
            check_signature(path, saved["signature"], config_signature(arch, train_cfg, data_cfg))
    return data, info, ckpt_dir, saved


def _train(args, name, arch, train_cfg, data_cfg, ctx) -> int:
    import contextlib

    from tqdm.auto import tqdm

    from ..train.checkpoint import CHECKPOINT
    from ..train.execution import resolve_device
    from ..train.trainer import train
    started = time.perf_counter()
    say = print if ctx.is_main else (lambda *a, **k: None)  # rank 0 speaks for the run
    data, info, ckpt_dir, saved = prepare(args, name, arch, train_cfg, data_cfg, ctx)
    device = resolve_device(train_cfg.device)
    if saved is not None:
        path = ckpt_dir / CHECKPOINT
        if saved["status"] in ("finished", "diverged"):
            final = saved["history"][-1] if saved["history"] else {}
            say(f"already {saved['status']}: {path} ({saved['epoch']} epochs, test error "
                f"{final.get('test_error', float('nan')):.4f}); pass --fresh to train again")
            return 0
        say(f"resuming from {path} after epoch {saved['epoch']}")
    from ..tracking.links import experiment_link, run_link
    from ..tracking.store import client as tracking_client
    from ..tracking.tracker import Tracker, tracked_run
    uri = args.tracking_uri or default_tracking_uri()
    client = tracking_client(uri) if ctx.is_main else None  # the first touch of the store

    n, unit = train_cfg.length
    procs = f" x {ctx.world} processes" if ctx.distributed else ""
    say(f"{name}: {info['params']:,} params, {info['macs'] / 1e6:,.1f}M MACs | {data.summary()} | "
        f"recipe {train_cfg.recipe}: {n} {unit}, batch {train_cfg.batch_size}, lr {train_cfg.lr:g}, {device}{procs}")
    run_name = args.run_name or f"{name}-{data.name}-s{train_cfg.seed}"
    tracker = Tracker.start(client, args.experiment, run_name) if ctx.is_main else None

    def report(epoch: int, m: dict) -> None:
        val = f"val {m['val_loss']:.3f}/{m['val_error']:.4f}  " if "val_error" in m else ""
        tqdm.write(f"epoch {epoch:>3}  train {m['train_loss']:.3f}/{m['train_error']:.4f}  {val}"
                   f"test {m['test_loss']:.3f}/{m['test_error']:.4f}  lr {m['lr']:.4g}  "
                   f"{m['epoch_seconds']:.1f}s  {m['images_per_second']:,.0f} img/s", file=sys.stdout)
        sys.stdout.flush()

    with tracked_run(tracker) if tracker is not None else contextlib.nullcontext():
        result = train(arch, train_cfg, data, tracker=tracker, checkpoint_dir=ckpt_dir,
                       on_epoch=report if ctx.is_main else None, model_name=name, progress=ctx.is_main)
    if not ctx.is_main:
        return 0
    f = result.final
    errors = ", ".join(f"{k} {f[f'{k}_error']:.4f}" for k in ("train", "val", "test") if f"{k}_error" in f)
    print(f"{result.status}: {result.epochs} epochs in {time.perf_counter() - started:.1f} s; "
          f"final error {errors or 'n/a'}" +
          (f"; best val {result.best_val_error:.4f}" if result.best_val_error is not None else ""))
    exp_id = client.get_run(tracker.run_id).info.experiment_id
    print(f"MLflow run {tracker.run_id} in experiment {args.experiment!r} of {redact(uri)}")
    print(f"  view: mlflow ui --backend-store-uri {redact(uri)}   then open the run (its metrics, parameters, dataset):\n"
          f"  {run_link(exp_id, tracker.run_id)}\n"
          f"  or the experiment's runs, to compare: {experiment_link(exp_id)}")
    return 0
