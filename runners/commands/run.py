"""`ablate run SPEC`: run (or resume) an ablation study on this host, with N local workers."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from ..errors import ConfigError, redact
from .study_options import add_execution_arguments, add_spec_arguments, make_runner, print_status


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_execution_arguments(p)
    p.add_argument("--workers", type=int, help="worker processes on this host (default: one per GPU, else 1)")
    p.add_argument("--workers-per-gpu", type=int, default=1, help="small CIFAR nets leave a GPU mostly idle")


def run(args) -> int:
    import torch

    from ..study.progress import StudyProgress
    from ..tracking.runs import Terminated, sigterm_raises
    from ..tracking.view import comparison_link
    gpus = torch.cuda.device_count() if args.device in ("auto", "cuda") else 0
    workers = args.workers or max(1, gpus * args.workers_per_gpu)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    threads = None if gpus else max(1, (os.cpu_count() or 1) // workers)
    runner = make_runner(args, threads=threads)
    spec = runner.spec
    # A missing dataset fails here, before anything is written. Spawned workers load their own
    # copy, so this one stays on the CPU.
    runner.dataset(device=None if workers == 1 else "cpu")
    runner.setup()
    runner.reopen_parent()
    runner.progress = StudyProgress(sys.stdout, 0, workers=workers)
    storage, uri = runner.storage_url, runner.tracking_uri
    print(f"study {spec.name}: {len(spec.variants)} variants x {len(spec.seeds)} seeds"
          + (f", search {spec.search.trials_per_variant} trials/variant" if spec.search else "")
          + f"; {workers} worker(s); storage {redact(storage)}")
    try:
        with sigterm_raises():
            if workers == 1:
                if threads:
                    torch.set_num_threads(threads)
                code = runner.work()
            else:
                code = _spawn_workers(args, workers, gpus, threads, storage, uri)
    except (KeyboardInterrupt, Terminated) as e:
        runner.end_parent("KILLED")
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130  # 128 + the signal's number, as a shell reports it
    runner.end_parent("FINISHED")
    if workers == 1:
        runner.progress.close()
    print_status(runner.status())
    print(f"\nMLflow: mlflow ui --backend-store-uri {redact(uri)}   then open the comparison:\n"
          f"  {comparison_link(runner.mlflow, spec.name)}")
    return code


def _spawn_workers(args, workers, gpus, threads, storage, uri) -> int:
    procs = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "runners.cli", "worker", args.spec, "--storage", storage,
               "--tracking-uri", uri, "--device", "cuda" if gpus else args.device,
               "--heartbeat", str(args.heartbeat), "--poll", str(args.poll)]
        cmd += [f"--set={o}" for o in args.overrides]
        if args.checkpoint_dir:
            cmd += ["--checkpoint-dir", args.checkpoint_dir]
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        else:
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
