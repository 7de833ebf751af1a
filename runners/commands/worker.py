"""`ablate worker SPEC`: join a study (on any machine) and run its trials until none are left."""
from __future__ import annotations

import argparse
import sys

from .study_options import add_execution_arguments, add_spec_arguments, make_runner


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_execution_arguments(p)
    p.add_argument("--threads", type=int, help="CPU threads for this worker (default: all cores)")


def run(args) -> int:
    from ..study.progress import StudyProgress
    from ..tracking.runs import Terminated, sigterm_raises
    runner = make_runner(args, threads=args.threads)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
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
