"""`ablate worker SPEC`: join a study (on any machine) and run its trials until none are left
(alone, or as a process group with resources.gpus_per_trial: runners/study/group.py)."""
from __future__ import annotations

import argparse
import sys

from .study_options import add_execution_arguments, add_spec_arguments, runner_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_execution_arguments(p)
    p.add_argument("--threads", type=int, help="CPU threads for this worker (default: all cores), "
                                               "shared by a process group's processes")


def run(args) -> int:
    from ..study.group import run_worker
    from ..study.progress import StudyProgress
    from ..study.runner import make_runner
    runner = make_runner(args.spec, args.overrides, threads=args.threads, **runner_options(args))
    # Plain lines, no bar: workers may share a terminal.
    progress = StudyProgress(sys.stdout, 0, tty=False, errors=sys.stderr, prefix="ablate worker")
    code = run_worker(runner, args.argv, threads=args.threads, retry_failed=args.retry_failed, progress=progress)
    if runner.layout is not None:
        for line in runner.exhausted():
            print(f"ablate worker: gave up on {line}; rerun with --retry-failed to try again", file=sys.stderr)
    return code
