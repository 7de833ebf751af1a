"""`ablate train MODEL`: train one model with the paper's recipe and log it to MLflow.

    ablate train resnet20 --dataset ../shared/data/cifar10-jpeg-subset --epochs 8 --val-size 1000
    ablate train plain56 --shortcut B --warmup --iterations 64000      # the paper's length
    ablate train resnet20 --set train.schedule=cosine --set data.normalize=channel
    ablate train resnet50 --dataset /data/imagenet --nproc-per-node 8    # He 2016a's ImageNet recipe

Every field of the architecture, the recipe and the data is a flag (derived from its declaration:
runners/commands/fields.py); the recipe is a named preset under the explicit values (--recipe).
The work is runners/train/job.py; this parses and prints.
"""
from __future__ import annotations

import argparse
import sys
import time

from ..errors import redact
from ..train.config import CONFIG_CLASSES
from .fields import add_field_arguments, field_values

DEFAULT_EXPERIMENT = "ablate-train"
TITLES = {"data": "data", "train": "recipe (default: He et al. 2016a's CIFAR recipe, 64k iterations)",
          "arch": "architecture overrides"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a registered name (see `ablate models`) or [preact-](resnet|plain)<6n+2>")
    for section in ("data", "train", "arch"):
        add_field_arguments(p, section, CONFIG_CLASSES[section], TITLES[section])
    e = p.add_argument_group("processes")
    e.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="train on N local processes (GPUs) with DDP; the batch is the global batch")
    e.add_argument("--pack", type=int, default=1, metavar="K",
                   help="train K seeds (--seed, --seed + 1, ...) as one packed step, each its own MLflow run and "
                        "checkpoint (README: Packed training)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any field: arch.F (or bare F), train.F or data.F; VALUE is YAML (repeatable)")
    m = p.add_argument_group("tracking and checkpoints")
    m.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                   help=f"MLflow experiment (default: {DEFAULT_EXPERIMENT})")
    m.add_argument("--run-name", help="default: <model>-<dataset>-s<seed>")
    m.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db")
    m.add_argument("--checkpoint-dir", metavar="DIR",
                   help="default: results/checkpoints/<model>-<hash of the resolved config>")
    m.add_argument("--fresh", action="store_true", help="discard the checkpoint and start over")
    m.add_argument("--no-checkpoint", action="store_true", help="keep no checkpoint (no resume)")


def run(args) -> int:
    from ..train import distributed
    from ..train.execution import resolve_device
    from ..train.config import assemble
    from ..train.job import prepare
    job = assemble(args.model, {s: field_values(args, s, cls) for s, cls in CONFIG_CLASSES.items()}, args.set)
    options = dict(checkpoint_dir=args.checkpoint_dir, fresh=args.fresh, keep=not args.no_checkpoint)
    if args.pack != 1:
        return _train_pack(args, job)
    if args.nproc_per_node > 1 and not distributed.launched():
        # Everything a process would refuse is refused here, in one line, before any starts.
        distributed.local_batch(job.train.batch_size, args.nproc_per_node)
        prepare(job, distributed.Context(), **options)
        return distributed.launch(args.nproc_per_node, args.argv)
    ctx = distributed.init(resolve_device(job.train.device))
    try:
        code = _train(args, job, ctx, options)
        distributed.barrier(ctx)  # rank 0 closes its MLflow run after train(): leave together
        return code
    finally:
        distributed.finish()


def _train(args, job, ctx, options: dict) -> int:
    from tqdm.auto import tqdm

    from ..tracking.links import experiment_link, run_link
    from ..train.job import prepare, train_tracked
    started = time.perf_counter()
    say = print if ctx.is_main else (lambda *a, **k: None)  # rank 0 speaks for the run
    prepared = prepare(job, ctx, **options)
    if prepared.done:
        saved = prepared.saved
        final = saved["history"][-1] if saved["history"] else {}
        say(f"already {saved['status']}: {prepared.checkpoint} ({saved['epoch']} epochs, test error "
            f"{final.get('test_error', float('nan')):.4f}); pass --fresh to train again")
        return 0
    if prepared.saved is not None:
        say(f"resuming from {prepared.checkpoint} after epoch {prepared.saved['epoch']}")
    n, unit = job.train.length
    info, procs = prepared.info, f" x {ctx.world} processes" if ctx.distributed else ""
    say(f"{job.model}: {info['params']:,} params, {info['macs'] / 1e6:,.1f}M MACs | {prepared.data.summary()} | "
        f"recipe {job.train.recipe}: {n} {unit}, batch {job.train.batch_size}, lr {job.train.lr:g}, "
        f"{prepared.data.device}{procs}")

    def report(epoch: int, m: dict) -> None:
        val = f"val {m['val_loss']:.3f}/{m['val_error']:.4f}  " if "val_error" in m else ""
        tqdm.write(f"epoch {epoch:>3}  train {m['train_loss']:.3f}/{m['train_error']:.4f}  {val}"
                   f"test {m['test_loss']:.3f}/{m['test_error']:.4f}  lr {m['lr']:.4g}  "
                   f"{m['epoch_seconds']:.1f}s  {m['images_per_second']:,.0f} img/s", file=sys.stdout)
        sys.stdout.flush()

    out = train_tracked(job, prepared, ctx, experiment=args.experiment, run_name=args.run_name,
                        tracking_uri=args.tracking_uri, on_epoch=report)
    if not ctx.is_main:
        return 0
    r, f = out.result, out.result.final
    errors = ", ".join(f"{k} {f[f'{k}_error']:.4f}" for k in ("train", "val", "test") if f"{k}_error" in f)
    print(f"{r.status}: {r.epochs} epochs in {time.perf_counter() - started:.1f} s; final error {errors or 'n/a'}"
          + (f"; best val {r.best_val_error:.4f}" if r.best_val_error is not None else ""))
    print(f"MLflow run {out.run_id} in experiment {args.experiment!r} of {redact(out.tracking_uri)}")
    print(f"  view: mlflow ui --backend-store-uri {redact(out.tracking_uri)}   then open the run (its metrics, "
          f"parameters, dataset):\n  {run_link(out.experiment_id, out.run_id)}\n"
          f"  or the experiment's runs, to compare: {experiment_link(out.experiment_id)}")
    return 0


def _train_pack(args, job) -> int:
    """--pack K: seeds seed..seed+K-1 of the job as one pack (runners/train/job.py train_pack_tracked)."""
    import dataclasses

    from ..errors import ConfigError
    from ..train.job import train_pack_tracked
    if args.pack < 1:
        raise ConfigError(f"--pack must be a positive number of seeds, got {args.pack}")
    for flag, given in (("--nproc-per-node", args.nproc_per_node > 1), ("--checkpoint-dir", args.checkpoint_dir),
                        ("--run-name", args.run_name), ("--no-checkpoint", args.no_checkpoint)):
        if given:
            raise ConfigError(f"{flag} does not combine with --pack: each packed seed has its own run and "
                              "default checkpoint directory")
    jobs = [dataclasses.replace(job, train=dataclasses.replace(job.train, seed=job.train.seed + i))
            for i in range(args.pack)]
    started = time.perf_counter()
    print(f"{job.model}: seeds {', '.join(str(j.train.seed) for j in jobs)} packed into one step")
    out = train_pack_tracked(jobs, experiment=args.experiment, tracking_uri=args.tracking_uri, fresh=args.fresh,
                             on_epoch=lambda e, m: print(f"epoch {e:>3}  seed {job.train.seed}: train "
                                                         f"{m['train_error']:.4f}  test {m['test_error']:.4f}",
                                                         flush=True))
    for j, t in zip(jobs, out):
        f = t.result.final
        where = f"MLflow run {t.run_id}" if t.run_id else "already done: its checkpoint (--fresh trains again)"
        print(f"seed {j.train.seed}: {t.result.status}, {t.result.epochs} epochs, test error "
              f"{f.get('test_error', float('nan')):.4f}; {where}")
    print(f"{len(jobs)} runs in {time.perf_counter() - started:.1f} s, experiment {args.experiment!r} of "
          f"{redact(out[0].tracking_uri)}")
    return 0
