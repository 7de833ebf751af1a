"""`ablate run SPEC`: run (or resume) an ablation study on this host, with N local workers.

Workers per GPU, by default (--workers-per-gpu overrides): one process launches one kernel at a
time, and a CIFAR net's kernels are small (the same per-layer work at every depth), so a single
process leaves a large GPU idle between launches; several processes fill it. The rule, by the
study's largest model in MACs per image: under 0.5 GMACs (every CIFAR net up to ResNet-164) 4,
under 2 GMACs 2, else 1; never more than the cores per GPU, since each worker keeps one core
busy launching. It is a starting point, not a measurement: `ablate doctor --device cuda`
measures 1, 2, 4 and 8 nets at once on the GPU and prints the best.

A spec with `resources.gpus_per_trial: N` (N > 1) runs each trial on N GPUs: one worker per N
GPUs (a process group under torch.distributed.run, see runners/commands/worker.py), or one
group of N CPU processes on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from ..errors import ConfigError, redact
from .study_options import add_execution_arguments, add_spec_arguments, print_status
from .worker import check_group_devices


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_execution_arguments(p)
    p.add_argument("--workers", type=int, help="worker processes on this host (default: one per GPU, else 1; "
                                               "with gpus_per_trial N, one process group per N GPUs)")
    p.add_argument("--workers-per-gpu", type=int,
                   help="worker processes per GPU (default: by the largest model's MACs, see `ablate doctor`)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the study's runs, their size and estimated GPU-hours; run and write nothing")
    p.add_argument("--tflops", type=float, metavar="R",
                   help="with --dry-run: the sustained TFLOP/s per GPU assumed (default: 25 for CIFAR nets, 60 for ImageNet's)")


# (MACs per image below which, workers per GPU), first match; else 1.
WORKERS_BY_MACS = ((500e6, 4), (2e9, 2))


def default_workers_per_gpu(macs: int, cores: int, gpus: int) -> int:
    """The documented rule above, for a study whose largest model has `macs` MACs per image."""
    rule = next((k for limit, k in WORKERS_BY_MACS if macs < limit), 1)
    return max(1, min(rule, cores // max(gpus, 1)))


def _largest_macs(spec) -> int:
    import torch

    from models import ResNet
    macs = 0
    for v in spec.variants:
        with torch.device("meta"):  # shapes only
            net = ResNet(v.arch)
        macs = max(macs, net.complexity().macs)
    return macs


def worker_devices(workers: int, gpus: int, visible: str | None, per_worker: int = 1) -> list[str]:
    """CUDA_VISIBLE_DEVICES for each of `workers` workers over the parent's `gpus` GPUs, each
    worker taking `per_worker` of them (a process group's): entries of the parent's own list
    (indices, UUIDs or MIG names) when it has one, else indices. Single-GPU workers share GPUs
    round robin; groups take disjoint sets."""
    if gpus < 1:
        return []
    entries = [e.strip() for e in visible.split(",") if e.strip()] if visible else []
    entries = entries[:gpus] if entries else [str(g) for g in range(gpus)]
    if per_worker > 1:
        return [",".join(entries[i * per_worker:(i + 1) * per_worker]) for i in range(workers)]
    return [entries[i % len(entries)] for i in range(workers)]


def run(args) -> int:
    if args.dry_run:
        return dry_run(args)
    import torch

    from ..study.progress import StudyProgress
    from ..study.status import status
    from ..signals import Terminated, sigterm_raises
    from ..tracking.view import comparison_link
    from .study_options import make_runner
    gpus = torch.cuda.device_count() if args.device in ("auto", "cuda") else 0
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.workers_per_gpu is not None and args.workers_per_gpu < 1:
        raise ConfigError(f"--workers-per-gpu must be at least 1, got {args.workers_per_gpu}")
    cores = os.cpu_count() or 1
    runner = make_runner(args)
    group = runner.spec.resources.gpus_per_trial
    if group > 1:  # whole GPUs per trial: one worker (a process group) per `group` of them
        check_group_devices(args.spec, group, args.device)
        if args.workers_per_gpu is not None:
            raise ConfigError(f"{args.spec}: --workers-per-gpu: a trial on {group} GPUs (resources.gpus_per_trial) "
                              "takes them whole; use --workers for the number of process groups")
        if args.workers is not None and gpus and args.workers * group > gpus:
            raise ConfigError(f"--workers {args.workers} x resources.gpus_per_trial {group} needs "
                              f"{args.workers * group} GPUs; {gpus} are visible")
        workers = args.workers or max(1, gpus // group)
    else:
        per_gpu = args.workers_per_gpu
        if gpus and not args.workers and per_gpu is None:
            per_gpu = default_workers_per_gpu(_largest_macs(runner.spec), cores, gpus)
        workers = args.workers or max(1, gpus * (per_gpu or 1))
    in_process = workers == 1 and group == 1  # else spawned workers, each loading its own data
    # Each worker gets its share of the cores, GPU workers too (torch would give each all of them).
    threads = max(1, cores // workers) if (gpus or not in_process) else None
    runner.threads = threads
    spec = runner.spec
    # A missing dataset (or a subset larger than it) fails here, before anything is written.
    # Spawned workers load their own copy, so this one stays on the CPU.
    runner.dataset(device=None if in_process else "cpu")
    runner.open()
    runner.setup(retry_failed=args.retry_failed)
    runner.progress = StudyProgress(sys.stdout, 0, workers=workers)
    storage, uri = runner.storage_url, runner.tracking_uri
    print(f"study {spec.name}: {len(spec.variants)} variants x {len(spec.seeds)} seeds"
          + (f", search {spec.search.trials_per_variant} trials/variant" if spec.search else "")
          + f"; {workers} worker(s)" + (f" of {group} processes" if group > 1 else "")
          + f"; storage {redact(storage)}")
    # From here the parent run is RUNNING: every way out closes it, an unexpected error included.
    runner.reopen_parent()
    ended = "FAILED"
    try:
        with sigterm_raises():
            if in_process:
                if threads:
                    torch.set_num_threads(threads)
                code = runner.work()
            else:
                code = _spawn_workers(args, workers, gpus, threads, storage, uri, group)
        ended = "FINISHED"
    except (KeyboardInterrupt, Terminated) as e:
        ended = "KILLED"
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130  # 128 + the signal's number, as a shell reports it
    finally:
        try:
            runner.end_parent(ended)
        except Exception as e:  # noqa: BLE001 - never mask the error that got us here
            print(f"ablate run: could not close the MLflow parent run: {redact(e)}", file=sys.stderr)
    if in_process:
        runner.progress.close()
    print_status(status(runner.layout))
    for line in runner.exhausted():
        print(f"ablate run: gave up on {line}; rerun with --retry-failed to try again", file=sys.stderr)
    print(f"\nMLflow: mlflow ui --backend-store-uri {redact(uri)}   then open the comparison:\n"
          f"  {comparison_link(runner.mlflow, spec.name)}")
    return code or (1 if runner.exhausted() else 0)


def _spawn_workers(args, workers, gpus, threads, storage, uri, group) -> int:
    procs = []
    devices = worker_devices(workers, gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), group)
    for i in range(workers):
        cmd = [sys.executable, "-m", "runners.cli", "worker", args.spec, "--storage", storage,
               "--tracking-uri", uri, "--device", "cuda" if gpus else args.device,
               "--heartbeat", str(args.heartbeat), "--poll", str(args.poll)]
        cmd += [f"--set={o}" for o in args.overrides]
        if args.checkpoint_dir:
            cmd += ["--checkpoint-dir", args.checkpoint_dir]
        if args.attempts:
            cmd += ["--attempts", str(args.attempts)]
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = devices[i]
        cmd += ["--threads", str(threads)]
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        return max(p.wait() for p in procs)
    except BaseException:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        raise


def dry_run(args) -> int:
    """`--dry-run`: the spec checked, its runs sized and costed (runners/study/estimate.py)."""
    from ..study.estimate import LAUNCH_MS, TFLOPS, estimate
    from ..study.spec import load_spec
    from .table import text_table
    if args.tflops is not None and args.tflops <= 0:
        raise ConfigError(f"--tflops must be positive, got {args.tflops}")
    spec = load_spec(args.spec, args.overrides, check_data=False)
    rows, source = estimate(spec, args.tflops)
    print(text_table(["variant", "params", "GMACs/img", "runs", "iterations", "images/run", "GPU-h/run", "bound"],
                     [[r.variant, f"{r.params / 1e6:.2f}M", f"{r.macs / 1e9:.3f}", str(r.runs), f"{r.iterations:,}",
                       f"{r.images / 1e6:.2f}M", f"{r.gpu_hours:.2f}", r.bound] for r in rows]))
    total = sum(r.total_gpu_hours for r in rows)
    rate = f"{args.tflops:g} TFLOP/s" if args.tflops else " or ".join(
        f"{TFLOPS[f]:g} TFLOP/s ({f})" for f in sorted({v.arch.family for v in spec.variants}))
    gpus = spec.resources.gpus_per_trial
    print(f"\n{spec.name}: {sum(r.runs for r in rows)} runs, estimated {total:.1f} GPU-hours"
          + (f" ({gpus} GPUs per trial: {total / gpus:.1f} h on as many)" if gpus > 1 else ""))
    print(f"training images: {source}. Per run: max(6 x MACs x images / {rate}, iterations x depth x "
          f"{LAUNCH_MS} ms); assumed rates, evaluation not counted, search trials at full length. Nothing was written.")
    return 0
