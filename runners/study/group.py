"""`ablate worker`: join a study (on any machine) and run its trials until none are left, alone
or as a process group.

With `resources.gpus_per_trial: N` (N > 1) a worker is a process group: it starts itself again as
N processes under torch.distributed.run, one per local GPU (N CPU processes over gloo on a
machine without one); rank 0 claims each trial and the group trains it with DDP. Under an outer
torchrun (several nodes, see the README) the worker joins the group it finds.

When a process of a group fails, the group ends (its peers may wait in a collective it never
joins) and a fresh group is started (a new torchrun, up to `attempts` times), which resumes the
trial from its checkpoint. torchrun reports any non-zero status as the group's failure, so rank 0
leaves the worker's own exit status (1: cells failed) in a file the launcher names.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import ConfigError, first_line
from ..signals import Terminated, sigterm_raises
from ..train import distributed
from ..train.execution import resolve_device
from .progress import StudyProgress
from .runner import StudyRunner, store_environment, without_store_options
from .trial import lost_peer

GROUP_STATUS = "ABLATE_GROUP_STATUS"  # where rank 0 of a group this command launched leaves its exit status


def check_group_devices(spec_path: str, group: int, device: str) -> None:
    """ConfigError unless a group of `group` processes can run here: that many GPUs, or none
    (CPU processes over gloo), and no single GPU named for all of them."""
    if device.startswith("cuda:"):
        raise ConfigError(f"{spec_path}: resources.gpus_per_trial {group}: each process takes its own GPU; "
                          f"use --device cuda (and CUDA_VISIBLE_DEVICES to choose them), not {device}")
    if device == "cpu":
        return
    gpus = torch.cuda.device_count()
    if 0 < gpus < group or (device == "cuda" and gpus < group):
        raise ConfigError(f"{spec_path}: resources.gpus_per_trial {group} needs {group} GPUs and {gpus} are visible "
                          f"here; set resources.gpus_per_trial={max(gpus, 1)} (the global batch is kept) or use "
                          "a machine with more")


def launch_group(group: int, argv: list[str], restarts: int, progress: StudyProgress) -> int:
    """Run this worker as a process group of `group` processes until it finishes, starting a
    fresh group (a new torchrun) up to `restarts` times after one fails."""
    for restart in range(restarts + 1):
        with tempfile.TemporaryDirectory() as tmp:
            status = Path(tmp) / "status"
            os.environ[GROUP_STATUS] = str(status)
            code = distributed.launch(group, argv)
            if code == 0:  # the group finished its loop: rank 0's own exit status
                return int(status.read_text()) if status.exists() else 0
        if code in (129, 130, 143):  # stopped (SIGHUP, Ctrl-C, SIGTERM): no new group
            return code
        if restart < restarts:
            progress.warn(f"the process group failed (exit status {code}); starting a new one "
                          f"({restart + 1} of {restarts})")
    return code


def run_worker(runner: StudyRunner, argv: list[str], *, threads: int | None, retry_failed: bool,
               progress: StudyProgress) -> int:
    """Work the study until no trial is left: this process alone, the launcher of a process
    group, or one rank of a group. Returns the exit status (143 on SIGTERM, 129 on SIGHUP; 1 when a cell failed
    or a process of the group was lost)."""
    group = runner.spec.resources.gpus_per_trial
    if group > 1 and not distributed.launched():
        check_group_devices(runner.spec.path, group, runner.device)
        runner.dataset(device="cpu")  # a missing dataset fails here, before any process starts
        os.environ.update(store_environment(runner.storage_url, runner.tracking_uri))  # not on command lines
        return launch_group(group, without_store_options(argv), runner.attempts or runner.spec.attempts, progress)
    ctx = distributed.init(resolve_device(runner.device)) if group > 1 else distributed.Context()
    if ctx.world != group:
        raise ConfigError(f"{runner.spec.path}: resources.gpus_per_trial is {group} but this process group has "
                          f"{ctx.world} processes; start it with --nproc-per-node (times --nnodes) = {group}")
    if threads:
        runner.threads = max(1, threads // ctx.local_world)  # the group's processes share the worker's cores
        torch.set_num_threads(runner.threads)
    try:
        runner.dataset()  # a missing dataset fails here, before anything is written
        if not ctx.is_main:
            return runner.follow()
        code = _work(runner, retry_failed, progress)
        if ctx.distributed and os.environ.get(GROUP_STATUS):
            Path(os.environ[GROUP_STATUS]).write_text(str(code))
            return 0
        return code
    except Exception as e:
        if not (ctx.distributed and lost_peer(e)):
            raise
        # Rank 0 gave the trial back for a retry (runners/study/trial.py); one line, no traceback.
        progress.warn(f"rank {ctx.rank} lost a process of its group: {first_line(e)}")
        return 1
    finally:
        distributed.finish()


def _work(runner: StudyRunner, retry_failed: bool, progress: StudyProgress) -> int:
    runner.open()
    runner.setup(retry_failed=retry_failed)
    runner.progress = progress
    found = runner.found_line()
    if found:
        progress.note(found)
    with sigterm_raises():
        try:
            return runner.work()
        except Terminated as e:
            return e.exit_status
