"""`ablate doctor`: a self-check of this machine for the lab (runners/doctor/ runs the
checks); prints the table and the recommended settings, writes the JSON. Exit 1 if a check failed.

The GPU acceptance run (README, "The GPU acceptance run") starts with a shortened doctor:
    python -m runners.cli doctor --device cuda --data /tmp/data/cifar10-jpeg --only cuda-path,packed ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="the short version (CI: under a minute on a CPU)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--data", metavar="PATH", help="an ImageFolder root with train/ and test/ (default: synthetic)")
    p.add_argument("--budget", type=float, default=420.0,
                   help="seconds after which no further measurement starts (default: 420)")
    p.add_argument("--only", metavar="GROUP[,GROUP]",
                   help="run only these check groups (the environment and data always run): cuda-path, agreement, "
                        "throughput, compile-modes, nets-at-once, packed")


def run(args) -> int:
    from ..doctor.context import Options
    from ..doctor.run import GROUPS, run_doctor
    if args.data is not None and not Path(args.data).is_dir():
        raise ConfigError(f"--data {args.data} is not a folder; give an ImageFolder root with train/ and test/")
    if args.budget <= 0:
        raise ConfigError(f"--budget must be positive, got {args.budget}")
    only = None
    if args.only is not None:
        only = tuple(g.strip() for g in args.only.split(",") if g.strip())
        unknown = [g for g in only if g not in GROUPS]
        if unknown or not only:
            raise ConfigError(f"--only takes check groups from {', '.join(GROUPS)}, comma-separated; "
                              f"got {args.only!r}")
    def progress(report: dict) -> None:  # a line per check on stderr; the JSON so far
        c = report["checks"][-1]
        print(f"[{report['seconds']:5.0f} s] {c['section']}: {c['name']}: {c['status']} {c['value']}",
              file=sys.stderr, flush=True)
        if args.json:
            write_json(Path(args.json), report)

    report = run_doctor(Options(device=args.device, quick=args.quick, data=args.data, budget_s=args.budget,
                                only=only),
                        on_check=progress)
    print_report(report)
    if args.json:
        write_json(Path(args.json), report)
    return 0 if report["ok"] else 1


def write_json(path: Path, report: dict) -> None:
    """Rewritten after every check (atomically), so a run stopped by a time limit leaves its rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)


def print_report(report: dict) -> None:
    rows = [(c["section"], c["name"], c["status"], c["value"]) for c in report["checks"]]
    widths = [max(len(r[i]) for r in rows + [("section", "check", "status", "")]) for i in range(3)]
    print(f"{'section':<{widths[0]}}  {'check':<{widths[1]}}  {'status':<{widths[2]}}  result")
    section = None
    for s, name, status, value in rows:
        print(f"{(s if s != section else ''):<{widths[0]}}  {name:<{widths[1]}}  {status:<{widths[2]}}  {value}")
        section = s
    counts = ", ".join(f"{n} {k}" for k, n in report["counts"].items() if n)
    print(f"\n{counts}; {report['seconds']:.0f} s on {report['device']}")
    rec = report["recommendation"]
    if rec:
        flags = []
        if "workers_per_gpu" in rec:
            flags.append(f"--workers-per-gpu {rec['workers_per_gpu']}")
        if rec.get("pack", 1) > 1:
            flags.append(f"--pack {rec['pack']}")
        if rec.get("compile"):
            flags.append("--set train.compile=true")
            if rec.get("compile_mode", "default") != "default":
                flags.append(f"--set train.compile_mode={rec['compile_mode']}")
        print(f"recommended for `ablate run`: {' '.join(flags) or 'the defaults'} ({json.dumps(rec)})")
