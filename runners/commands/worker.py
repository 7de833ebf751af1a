"""`ablate worker SPEC`: join a study (on any machine) and run its trials until none are left.

With `resources.gpus_per_trial: N` (N > 1) a worker is a process group: the command starts
itself again as N processes under torch.distributed.run, one per local GPU (N CPU processes
over gloo on a machine without one); rank 0 claims each trial and the group trains it with DDP.
Under an outer torchrun (several nodes, see the README) the command joins the group it finds.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ConfigError, first_line
from .study_options import add_execution_arguments, add_spec_arguments, make_runner

GROUP_STATUS = "ABLATE_GROUP_STATUS"  # where rank 0 of a group this command launched leaves its exit status


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_execution_arguments(p)
    p.add_argument("--threads", type=int, help="CPU threads for this worker (default: all cores), "
                                               "shared by a process group's processes")


def run(args) -> int:
    from ..train import distributed
    runner = make_runner(args, threads=args.threads)
    group = runner.spec.resources.gpus_per_trial
    if group > 1 and not distributed.launched():
        check_group_devices(args.spec, group, args.device)
        runner.dataset(device="cpu")  # a missing dataset fails here, before any process starts
        return _launch_group(group, args.argv, restarts=runner.attempts or runner.spec.attempts)
    import torch

    from ..study.trial import lost_peer
    from ..train.execution import resolve_device
    ctx = distributed.init(resolve_device(args.device)) if group > 1 else distributed.Context()
    if ctx.world != group:
        raise ConfigError(f"{args.spec}: resources.gpus_per_trial is {group} but this process group has "
                          f"{ctx.world} processes; start it with --nproc-per-node (times --nnodes) = {group}")
    if args.threads:
        runner.threads = max(1, args.threads // ctx.local_world)  # the group's processes share the worker's cores
        torch.set_num_threads(runner.threads)
    try:
        if not ctx.is_main:
            runner.dataset()
            return runner.follow()
        code = _work(runner, args)
        if ctx.distributed and os.environ.get(GROUP_STATUS):
            # torchrun reports any non-zero status as the group's failure (and we would start
            # a new group); a study with failed cells is not that: say so through the file.
            Path(os.environ[GROUP_STATUS]).write_text(str(code))
            return 0
        return code
    except Exception as e:
        if not (ctx.distributed and lost_peer(e)):
            raise
        # Rank 0 gave the trial back for a retry (runners/study/trial.py); one line, no traceback.
        print(f"ablate worker: rank {ctx.rank} lost a process of its group: {first_line(e)}", file=sys.stderr)
        return 1
    finally:
        distributed.finish()


def _launch_group(group: int, argv: list[str], restarts: int) -> int:
    """Run this worker as a process group of `group` processes until it finishes, starting a
    fresh group (a new torchrun) up to `restarts` times after one fails. A process that fails
    ends its group (its peers may wait in a collective it never joins); the trial it was
    training resumes from its checkpoint in the next group."""
    import tempfile

    from ..train import distributed
    for restart in range(restarts + 1):
        with tempfile.TemporaryDirectory() as tmp:
            status = Path(tmp) / "status"
            os.environ[GROUP_STATUS] = str(status)
            code = distributed.launch(group, argv)
            if code == 0:  # the group finished its loop: rank 0's own exit status
                return int(status.read_text()) if status.exists() else 0
        if code in (130, 143):
            return code
        if restart < restarts:
            print(f"ablate worker: the process group failed (exit status {code}); starting a new one "
                  f"({restart + 1} of {restarts})", file=sys.stderr, flush=True)
    return code


def _work(runner, args) -> int:
    from ..study.progress import StudyProgress
    from ..signals import Terminated, sigterm_raises
    runner.dataset()  # a missing dataset fails here, before anything is written
    runner.open()
    runner.setup(retry_failed=args.retry_failed)
    runner.progress = StudyProgress(sys.stdout, 0, tty=False)  # plain lines: workers may share a terminal
    with sigterm_raises():
        try:
            code = runner.work()
        except Terminated:
            return 143
    for line in runner.exhausted():
        print(f"ablate worker: gave up on {line}; rerun with --retry-failed to try again", file=sys.stderr)
    return code


def check_group_devices(spec: str, group: int, device: str) -> None:
    """ConfigError unless a group of `group` processes can run here: that many GPUs, or none
    (CPU processes over gloo), and no single GPU named for all of them."""
    if device.startswith("cuda:"):
        raise ConfigError(f"{spec}: resources.gpus_per_trial {group}: each process takes its own GPU; "
                          f"use --device cuda (and CUDA_VISIBLE_DEVICES to choose them), not {device}")
    if device == "cpu":
        return
    import torch
    gpus = torch.cuda.device_count()
    if 0 < gpus < group or (device == "cuda" and gpus < group):
        raise ConfigError(f"{spec}: resources.gpus_per_trial {group} needs {group} GPUs and {gpus} are visible "
                          f"here; set resources.gpus_per_trial={max(gpus, 1)} (the global batch is kept) or use "
                          "a machine with more")
