"""`ablate run`: a study on this host, run by N local workers, with the parent run's life around them.

Workers per GPU, by default: one process launches one kernel at a time, and a CIFAR net's kernels
are small (the same per-layer work at every depth), so a single process leaves a large GPU idle
between launches; several processes fill it. The rule, by the study's largest model in MACs per
image: under 0.5 GMACs (every CIFAR net up to ResNet-164) 4, under 2 GMACs 2, else 1; never more
than the cores per GPU, since each worker keeps one core busy launching. It is a starting point,
not a measurement: `ablate doctor --device cuda` measures 1, 2, 4 and 8 nets at once and prints
the best.

A spec with `resources.gpus_per_trial: N` (N > 1) runs each trial on N GPUs: one worker per N
GPUs, each a process group (runners/study/group.py), or one group of N CPU processes on a
machine without a GPU.

One worker runs in this process; more are `ablate worker` processes, each loading its own data
and given cores/N threads (two processes with two threads each on 2 cores were measured 8x
slower than one).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch

from models.network import ResNet

from ..errors import ConfigError
from ..signals import Terminated, sigterm_raises
from .group import check_group_devices
from .progress import StudyProgress
from .runner import StudyRunner, store_environment
from .spec import StudySpec

# (MACs per image below which, workers per GPU), first match; else 1.
WORKERS_BY_MACS = ((500e6, 4), (2e9, 2))


def default_workers_per_gpu(macs: int, cores: int, gpus: int) -> int:
    """The documented rule above, for a study whose largest model has `macs` MACs per image."""
    rule = next((k for limit, k in WORKERS_BY_MACS if macs < limit), 1)
    return max(1, min(rule, cores // max(gpus, 1)))


def largest_macs(spec: StudySpec) -> int:
    """MACs per image of the study's largest model, counted on the meta device (shapes only)."""
    macs = 0
    for v in spec.variants:
        with torch.device("meta"):
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


@dataclass(frozen=True)
class WorkerPlan:
    """How `ablate run` works a study here: `workers` workers (process groups of `group`
    processes when a trial takes several GPUs), `threads` each, over `gpus` GPUs."""

    workers: int
    gpus: int
    group: int
    threads: int | None

    @property
    def in_process(self) -> bool:
        """One single-process worker: this process trains; otherwise spawned workers do."""
        return self.workers == 1 and self.group == 1


def plan_workers(spec: StudySpec, spec_path: str, device: str, workers: int | None,
                 workers_per_gpu: int | None) -> WorkerPlan:
    """The workers for this host; ConfigError for a request the host cannot meet."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if workers_per_gpu is not None and workers_per_gpu < 1:
        raise ConfigError(f"--workers-per-gpu must be at least 1, got {workers_per_gpu}")
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    cores = os.cpu_count() or 1
    group = spec.resources.gpus_per_trial
    if group > 1:  # whole GPUs per trial: one worker (a process group) per `group` of them
        check_group_devices(spec_path, group, device)
        if workers_per_gpu is not None:
            raise ConfigError(f"{spec_path}: --workers-per-gpu: a trial on {group} GPUs (resources.gpus_per_trial) "
                              "takes them whole; use --workers for the number of process groups")
        if workers is not None and gpus and workers * group > gpus:
            raise ConfigError(f"--workers {workers} x resources.gpus_per_trial {group} needs "
                              f"{workers * group} GPUs; {gpus} are visible")
        count = workers or max(1, gpus // group)
    else:
        per_gpu = workers_per_gpu
        if gpus and not workers and per_gpu is None:
            per_gpu = default_workers_per_gpu(largest_macs(spec), cores, gpus)
        count = workers or max(1, gpus * (per_gpu or 1))
    in_process = count == 1 and group == 1
    # Each worker gets its share of the cores, GPU workers too (torch would give each all of them).
    threads = max(1, cores // count) if (gpus or not in_process) else None
    return WorkerPlan(count, gpus, group, threads)


@dataclass(frozen=True)
class WorkerCommand:
    """What every spawned `ablate worker` is told: the spec as given and the options to pass on."""

    spec_path: str
    overrides: tuple[str, ...] = ()
    device: str = "auto"
    checkpoint_dir: str | None = None
    attempts: int | None = None
    heartbeat: int = 30
    poll: float = 2.0

    def argv(self, gpus: int, threads: int) -> list[str]:
        """The worker's command line. The stores are not on it (a command line is readable by any
        local user, `ps`): they travel in the environment (`store_environment`)."""
        device = "cuda" if gpus else self.device
        cmd = [sys.executable, "-m", "runners.cli", "worker", self.spec_path, "--device", device,
               "--heartbeat", str(self.heartbeat), "--poll", str(self.poll)]
        cmd += [f"--set={o}" for o in self.overrides]
        if self.checkpoint_dir:
            cmd += ["--checkpoint-dir", self.checkpoint_dir]
        if self.attempts:
            cmd += ["--attempts", str(self.attempts)]
        return cmd + ["--threads", str(threads)]


def spawn_workers(plan: WorkerPlan, command: WorkerCommand, storage: str, tracking_uri: str) -> int:
    """Start `plan.workers` worker processes and wait for all; the worst exit status. Stopping
    this process (SIGTERM, Ctrl-C) stops them too."""
    procs = []
    devices = worker_devices(plan.workers, plan.gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), plan.group)
    for i in range(plan.workers):
        env = {**os.environ, **store_environment(storage, tracking_uri)}
        if plan.gpus:
            env["CUDA_VISIBLE_DEVICES"] = devices[i]
        procs.append(subprocess.Popen(command.argv(plan.gpus, plan.threads), env=env))
    try:
        return max(p.wait() for p in procs)
    except BaseException:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        raise


@dataclass
class HostOutcome:
    code: int  # the command's exit status
    interrupted: bool = False


def run_on_host(runner: StudyRunner, plan: WorkerPlan, command: WorkerCommand, *, retry_failed: bool,
                progress: StudyProgress) -> HostOutcome:
    """Set the study up and work it with the planned workers; the parent run is RUNNING from the
    moment work starts and closed on every way out (FINISHED, KILLED when interrupted, FAILED on
    an unexpected error). Ctrl-C exits 130, SIGTERM 143 and SIGHUP 129, as a shell reports them."""
    runner.threads = plan.threads
    # A missing dataset (or a subset larger than it) fails here, before anything is written.
    # Spawned workers load their own copy, so this one stays on the CPU.
    runner.dataset(device=None if plan.in_process else "cpu")
    runner.open()
    runner.setup(retry_failed=retry_failed)
    runner.progress = progress
    spec = runner.spec
    progress.note(f"study {spec.name}: {len(spec.variants)} variants x {len(spec.seeds)} seeds"
                  + (f", search {spec.search.trials_per_variant} trials/variant" if spec.search else "")
                  + f"; {plan.workers} worker(s)" + (f" of {plan.group} processes" if plan.group > 1 else "")
                  + f"; storage {runner.storage_label}")
    found = runner.found_line()
    if found:
        progress.note(found)
    runner.reopen_parent()
    ended = "FAILED"
    try:
        with sigterm_raises():
            if plan.in_process:
                if plan.threads:
                    torch.set_num_threads(plan.threads)
                code = runner.work()
            else:
                code = spawn_workers(plan, command, runner.storage_url, runner.tracking_uri)
        ended = "FINISHED"
    except (KeyboardInterrupt, Terminated) as e:
        ended = "KILLED"
        progress.end_line()  # what the command says next starts a line of its own
        return HostOutcome(e.exit_status if isinstance(e, Terminated) else 130, interrupted=True)
    finally:
        runner.close_parent(ended)
    if plan.in_process:
        progress.close()
    return HostOutcome(code or (1 if runner.exhausted() else 0))
