"""`ablate bench [MODEL]`: training throughput of the trainer's own steps vs a conventional loop,
and with --utilization as a fraction of the machine's dense matmul rate. The measurement is
runners/train/bench.py (what each loop is, and how the timing is kept fair); this prints it.
Nothing here asserts a speed: tests never time anything.
"""
from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path

from ..errors import ConfigError
from ..train.config import DataConfig, TrainConfig

# The shared CPU-scale subset (12k CIFAR-10 JPEGs) if this checkout sits beside it.
SHARED_SUBSET = ("shared/data/cifar10-jpeg-subset", "../shared/data/cifar10-jpeg-subset")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="resnet20", help="default: resnet20")
    p.add_argument("--dataset", metavar="NAME|PATH",
                   help="default: the shared cifar10-jpeg-subset if present, else synthetic")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, help="timed training steps per repeat (default: 10 on CPU, 100 on CUDA)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each loop, alternating (default: 5)")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps of each loop first (default: 3)")
    p.add_argument("--workers", type=int,
                   help="num_workers of the conventional loop's DataLoader (default: 0 on CPU, where a "
                        "worker takes a core from the model; min(8, cores) beside a GPU)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile our model (the trainer's compile); with --pack, the packed step's vmapped "
                        "forward and each separate run")
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"), default="default",
                   help="with --compile: torch.compile's mode (reduce-overhead: CUDA graphs)")
    p.add_argument("--utilization", action="store_true",
                   help="also the training FLOP/s as a fraction of this machine's dense matmul FLOP/s")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=typing.get_args(typing.get_type_hints(TrainConfig)["precision"]),
                   default="fp32",
                   help="the trainer's train.precision (default: fp32, the papers')")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--pack", metavar="K[,K...]", type=pack_sizes,
                   help="instead: aggregate images/s of K models packed into one step beside K separate runs, "
                        "and their ratio, for each K (e.g. 1,2,4); recommends a K and records the rates in "
                        "results/rates.json (what --dry-run's estimate and resources.pack auto read)")
    p.add_argument("--processes", action="store_true",
                   help="with --pack: also K separate processes training at once (the --workers-per-gpu "
                        "alternative), each with cores/K threads")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def pack_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(k) for k in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--pack takes positive integers, comma-separated (1,2,4), got {text!r}")
    return sizes


def default_dataset() -> str:
    root = Path(__file__).resolve().parents[2]
    for rel in SHARED_SUBSET:
        if (root / rel / "train").is_dir():
            return str((root / rel).resolve())
    return "synthetic"


def run(args) -> int:
    import models
    from ..train.bench import bench
    from ..train.data import load_dataset
    from ..train.execution import resolve_device

    for flag in ("batch_size", "steps", "repeats"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if (args.workers or 0) < 0 or args.warmup_steps < 0:
        raise ConfigError("--workers and --warmup-steps must be >= 0")
    arch = models.resolve(args.model)
    device = resolve_device(args.device)
    name = args.dataset or default_dataset()
    data = load_dataset(DataConfig(name, val_size=0, subset=None if name != "synthetic" else 10_000), device)
    if len(data.train) < args.batch_size:
        raise ConfigError(f"{data.name} has {len(data.train)} training images, fewer than "
                          f"--batch-size {args.batch_size}")
    if args.processes and not args.pack:
        raise ConfigError("--processes needs --pack")
    if args.pack:
        from ..train.bench import bench_packed
        from ..train.rates import record
        r = bench_packed(arch, data, device=device, packs=args.pack, batch_size=args.batch_size, steps=args.steps,
                         repeats=args.repeats, warmup_steps=args.warmup_steps, threads=args.threads,
                         precision=args.precision, compile=args.compile, compile_mode=args.compile_mode,
                         processes=args.processes, data_config=data.config)
        r["model_name"] = args.model
        print_packed(r)
        print(f"recorded in {record([r])}")
        if args.json:
            Path(args.json).write_text(json.dumps(r, indent=2))
        return 0
    r = bench(arch, data, device=device, batch_size=args.batch_size, steps=args.steps, repeats=args.repeats,
              warmup_steps=args.warmup_steps, workers=args.workers, threads=args.threads,
              compile=args.compile, utilization=args.utilization, precision=args.precision)
    r["model_name"] = args.model
    print_bench(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


def print_bench(r: dict) -> None:
    dev = r["device"]
    labels = {"ours": f"ours (uint8 on {dev.split(':')[0]}, batched aug, "
                      f"{'channels_last' if r['channels_last'] else 'NCHW'}"
                      f"{', ' + r['precision'] if r['precision'] != 'fp32' else ''}"
                      f"{', compiled' if r['compile'] else ''})",
              "conventional": f"conventional (DataLoader num_workers={r['workers']}, PIL transforms, eager NCHW)"}
    threads = f", {r['threads']} threads" if dev == "cpu" else ""
    print(f"bench {r.get('model_name', '')} on {r['dataset']} ({r['train_images']} train images), batch "
          f"{r['batch_size']}, {dev}{threads}, {r['repeats']} x "
          f"{r['steps']} steps per loop (after {r['warmup_steps']} warm-up), cpus={r['cpus']}, torch {r['torch']}")
    width = max(len(labels[k]) for k in r["median"])
    print(f"{'loop':<{width}}  {'images/s (median)':>17}  repeats")
    for k in r["median"]:
        print(f"{labels[k]:<{width}}  {r['median'][k]:>17.1f}  {' '.join(f'{x:.1f}' for x in r['rates'][k])}")
    if "ratio" in r:
        print(f"ratio ours / conventional: {r['ratio']:.2f}x")
    if "utilization" in r:
        mm = r["matmul"]
        print(f"dense matmul ({mm['n']}x{mm['n']}, {mm['dtype']}): {mm['flops_per_s'] / 1e9:.1f} GFLOP/s (median)")
        for k, u in r["utilization"].items():
            gflops, mmacs = r['training_flops_per_s'][k] / 1e9, r['macs_per_image'] / 1e6
            print(f"{k}: {gflops:.1f} training GFLOP/s (6 x {mmacs:.1f}M "
                  f"MACs x images/s) = {100 * u:.1f}% of the matmul rate")


def print_packed(r: dict) -> None:
    threads = f", {r['threads']} threads" if r["device"] == "cpu" else ""
    mode = f", compiled ({r['compile_mode']})" if r["compile"] else ", eager"
    print(f"bench --pack {r.get('model_name', '')} on {r['dataset']}, batch {r['batch_size']} per model, "
          f"{r['device_name']}{threads}, {r['precision']}{mode}, {r['repeats']} x {r['steps']} steps per loop (after "
          f"{r['warmup_steps']} warm-up), alternating, cpus={r['cpus']}, torch {r['torch']}")
    processes = any("processes" in row for row in r["packs"])
    print(f"{'K':>3}  {'packed images/s':>15}  {'separate images/s':>17}  {'ratio':>6}"
          + (f"  {'K processes images/s':>20}  {'packed/best':>11}" if processes else "")
          + "   (aggregate over K models, medians)")
    for row in r["packs"]:
        if "packed" not in row:
            why = "out of device memory" if "out_of_memory" in row else row.get("skipped", "")
            print(f"{row['k']:>3}  {why}")
            continue
        print(f"{row['k']:>3}  {row['packed']:>15.1f}  {row['separate']:>17.1f}  {row['ratio']:>5.2f}x"
              + (f"  {row.get('processes', float('nan')):>20.1f}  {row['ratio_to_best_separate']:>10.2f}x"
                 if processes else ""))
    print(f"recommended pack: {r['recommended']}")
