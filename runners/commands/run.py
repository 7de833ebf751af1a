"""`ablate run SPEC`: run (or resume) an ablation study on this host, with N local workers
(runners/study/host.py says how many by default, and why); `--dry-run` sizes and costs it."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import ConfigError
from .study_options import add_execution_arguments, add_spec_arguments, print_status, runner_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_execution_arguments(p)
    p.add_argument("--workers", type=int, help="worker processes on this host (default: one per GPU, else 1; "
                                               "with gpus_per_trial N, one process group per N GPUs)")
    p.add_argument("--workers-per-gpu", type=int,
                   help="worker processes per GPU (default: by the largest model's MACs, see `ablate doctor`)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the study's runs, their size and estimated GPU-hours; run and write nothing")
    p.add_argument("--json", action="store_true",
                   help="with --dry-run: print every variant's resolved architecture, training config, size, runs "
                        "and estimate as one JSON document instead of the table")
    p.add_argument("--tflops", type=float, metavar="R",
                   help="with --dry-run: the sustained TFLOP/s per GPU assumed (default: 25 for CIFAR nets, "
                        "60 for ImageNet's)")
    p.add_argument("--cpu-rate", type=float, metavar="GMACS",
                   help="with --dry-run on a CPU: a training rate recorded earlier (forward GMAC/s, as a dry run "
                        "prints it) instead of measuring one for about 2 s")
    p.add_argument("--rates", metavar="FILE",
                   help="with --dry-run: GPU rates measured by `ablate bench --pack --json` or `ablate doctor "
                        "--json` (default: results/rates.json, where both record them, if it exists)")


def run(args) -> int:
    for flag in ("json", "rates"):
        if getattr(args, flag) and not args.dry_run:
            raise ConfigError(f"--{flag} needs --dry-run")
    if args.dry_run:
        return dry_run(args)
    # The spec is read and checked before torch, Optuna or MLflow is imported: bad input is quick.
    from ..study.spec import load_spec
    load_spec(args.spec, args.overrides)
    from ..study.host import WorkerCommand, plan_workers, run_on_host
    from ..study.progress import StudyProgress
    from ..study.runner import make_runner
    from ..study.status import status
    from ..tracking.view import comparison_link
    runner = make_runner(args.spec, args.overrides, **runner_options(args))
    plan = plan_workers(runner.spec, args.spec, args.device, args.workers, args.workers_per_gpu)
    command = WorkerCommand(args.spec, tuple(args.overrides), args.device, args.checkpoint_dir, args.attempts,
                            args.heartbeat, args.poll)
    progress = StudyProgress(sys.stdout, 0, workers=plan.workers, errors=sys.stderr, prefix="ablate run")
    outcome = run_on_host(runner, plan, command, retry_failed=args.retry_failed, progress=progress)
    if outcome.interrupted:
        print("ablate run: interrupted; rerun the same command to resume", file=sys.stderr)
        return outcome.code
    print_status(status(runner.layout))
    for line in runner.exhausted():
        print(f"ablate run: gave up on {line}; rerun with --retry-failed to try again", file=sys.stderr)
    if runner.store_lost():  # the workers said so in their line; no link into a store that is gone
        return outcome.code
    print(f"\nMLflow: mlflow ui --backend-store-uri {runner.tracking_label}   then open the comparison:\n"
          f"  {comparison_link(runner.mlflow, runner.spec.name)}")
    return outcome.code


def _cpu_rate(args) -> tuple[float, str] | None:
    """(forward MACs/s, where it came from) when the study would train on a CPU; else None."""
    if args.cpu_rate is not None:
        if args.cpu_rate <= 0:
            raise ConfigError(f"--cpu-rate must be positive, got {args.cpu_rate}")
        return args.cpu_rate * 1e9, "recorded (--cpu-rate)"
    import torch
    if args.device not in ("auto", "cpu") or (args.device == "auto" and torch.cuda.is_available()):
        return None
    from ..study.estimate import measure_cpu_rate
    return measure_cpu_rate(), f"measured now: a ResNet-20 training step on {torch.get_num_threads()} CPU thread(s)"


def dry_run(args) -> int:
    """`--dry-run`: the spec checked, its runs sized and costed (runners/study/estimate.py)."""
    from ..study.estimate import LAUNCH_MS, TFLOPS, MeasuredRates, dry_run_document, estimate, pack_plan, with_cpu_rate
    from ..train import rates as measured
    from ..study.spec import load_spec
    from .table import text_table
    from ..study.progress import duration
    if args.tflops is not None and args.tflops <= 0:
        raise ConfigError(f"--tflops must be positive, got {args.tflops}")
    spec = load_spec(args.spec, args.overrides, check_data=False)
    entries = measured.load(args.rates)
    rates = MeasuredRates(entries)
    k = dry_run_pack(spec, entries, rates.device)
    cpu = _cpu_rate(args)
    if args.json:
        doc = dry_run_document(spec, args.tflops, cpu, rates)
        if k > 1:
            doc["pack"] = {"k": k, "packs": pack_plan(spec, k, args.tflops, rates=rates)}
        print(json.dumps(doc, indent=2))
        return 0
    rows, source = estimate(spec, args.tflops, rates=rates)
    rows = with_cpu_rate(rows, cpu[0]) if cpu else rows
    print(text_table(["variant", "params", "GMACs/img", "runs", "iterations", "images/run", "GPU-h/run", "bound"]
                     + (["GPU rate"] if rates else []) + (["CPU-h/run"] if cpu else []),
                     [[r.variant, f"{r.params / 1e6:.2f}M", f"{r.macs / 1e9:.3f}", str(r.runs), f"{r.iterations:,}",
                       f"{r.images / 1e6:.2f}M", f"{r.gpu_hours:.2f}", r.bound]
                      + ([r.source] if rates else []) + ([f"{r.cpu_hours:.2f}"] if cpu else []) for r in rows]))
    total = sum(r.total_gpu_hours for r in rows)
    rate = f"{args.tflops:g} TFLOP/s" if args.tflops else " or ".join(
        f"{TFLOPS[f]:g} TFLOP/s ({f})" for f in sorted({v.arch.family for v in spec.variants}))
    gpus = spec.resources.gpus_per_trial
    print(f"\n{spec.name}: {sum(r.runs for r in rows)} runs, estimated {total:.1f} GPU-hours"
          + (f" ({gpus} GPUs per trial: {total / gpus:.1f} h on as many)" if gpus > 1 else ""))
    measured_rows = sum(r.source != "assumed" for r in rows)
    print(f"training images: {source}. Per run: max(6 x MACs x images / {rate}, iterations x depth x "
          f"{LAUNCH_MS} ms) where assumed"
          + (f"; {measured_rows} of {len(rows)} rows from rates measured on {rates.device} "
             f"({args.rates or measured.rates_path()})" if rates else
             " (no GPU measurement recorded: `ablate bench --pack` or `ablate doctor` on a GPU records one)")
          + "; evaluation not counted, search trials at full length. Nothing was written.")
    if cpu:
        cpu_h = sum(r.total_cpu_hours for r in rows)
        print(f"On this CPU: estimated {duration(cpu_h * 3600)} of training ({cpu_h:.2f} CPU-hours, one worker), "
              f"MACs x images at {cpu[0] / 1e9:.2f} forward GMAC/s, {cpu[1]}; evaluation not counted. "
              f"Give it back with --cpu-rate {cpu[0] / 1e9:.2f}.")
    if k > 1:
        print_packs(spec, k, pack_plan(spec, k, args.tflops, rates=rates))
    return 0


def dry_run_pack(spec, entries: list[dict], gpu: str | None) -> int:
    """The K a dry run shows packs for: resources.pack; for auto, the K recommended by the
    recorded measurement of the first variant on the measured GPU (what a worker there would
    take), else the seeds of a variant, the natural pack."""
    pack = spec.resources.pack
    if pack != "auto":
        return pack
    if gpu is not None:
        from ..study.pack import recorded_pack
        v = spec.variants[0]
        recorded = recorded_pack(entries, gpu, v.arch, v.recipe(spec.train))
        if recorded is not None:
            return recorded
    return min(len(spec.seeds), 16)


def print_packs(spec, k: int, packs: list[dict]) -> None:
    from .table import text_table
    print(f"\npacks of up to {k}" + (" (resources.pack auto: K is measured on the GPU, or read from a recorded "
                                    "measurement; without one shown for the seeds of a variant)"
                                    if spec.resources.pack == "auto" else "") + ":")
    print(text_table(["pack", "cells", "GPU-h", "alone GPU-h", "bound", "rate"],
                     [[str(i + 1), compact(p["cells"]), f"{p['gpu_hours']:.2f}", f"{p['alone_gpu_hours']:.2f}",
                       p["bound"], p["source"]] for i, p in enumerate(packs)]))
    packed, alone = sum(p["gpu_hours"] for p in packs), sum(p["alone_gpu_hours"] for p in packs)
    assumed = all(p["source"] == "assumed" for p in packs)
    print(f"confirmation cells packed: {len(packs)} packs, estimated {packed:.1f} GPU-hours (alone: {alone:.1f})"
          + ("; a pack assumed to cost its K models' compute at one model's launches (ablate bench --pack "
             "measures it)" if assumed else "; rates as the rate column says"))


def compact(cells: list[str]) -> str:
    """"v/seed=0", "v/seed=1", "w/seed=0" -> "v seeds 0,1; w seed 0"."""
    seeds: dict[str, list[str]] = {}
    for c in cells:
        variant, _, seed = c.partition("/seed=")
        seeds.setdefault(variant, []).append(seed)
    return "; ".join(f"{v} seed{'s' if len(s) > 1 else ''} {','.join(s)}" for v, s in seeds.items())
