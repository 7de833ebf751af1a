"""`ablate doctor`: the checks in order. What this machine runs, whether the trainer's CUDA path
works end to end, whether bf16 and fp32 training agree, how fast it trains, and how many nets one
device should train at once. Returns results; `runners/commands/doctor.py` prints them and writes the JSON.

Needs only torch, torchvision, numpy and Pillow (no Optuna, MLflow or tqdm: it is meant to run
on a bare GPU machine from a checkout). Every check is a row (section, name, status, value,
details); status is ok, fail, skip (with the reason) or info (a measurement). A check that raises
is a fail row with the error, and the others still run. Measurements stop being started once the
time budget is spent (the rest are skip rows that say so).

Sections: environment; cuda path (bf16 autocast, channels_last, compile, deterministic mode with a
bit-exact resume, resume across device types, divergence detection); agreement (true fp32 vs tf32 and
bf16 runs of the same short training); throughput (the bench's ours/conventional ratio, images/s of
ResNet-20/56/110, training FLOP/s against the same run's matmul rate, a profile of where step time
goes); several nets (aggregate images/s of 1, 2, 4, 8 worker processes on the one device, and
compile modes incl. CUDA graphs, and K models packed into one step beside K separate runs and K
processes, recorded in results/rates.json); data (the --data ImageFolder subset, else synthetic).
"""
from __future__ import annotations

from ..train.execution import resolve_device
from . import cuda_path, several_nets, throughput
from .context import Doctor, Options
from .environment import environment


GROUPS = ("cuda-path", "agreement", "throughput", "compile-modes", "nets-at-once", "packed")  # `--only`'s names


def run_doctor(opts: Options, on_check=None) -> dict:
    """All checks (or those of the groups in opts.only; the environment and data always run);
    `on_check(report so far)` after each, so a killed run still leaves its rows."""
    d = Doctor(opts, on_check)
    environment(d)
    d.device = resolve_device(opts.device)
    d.guarded("data", "dataset", d.load_data, measurement=False)
    if not hasattr(d, "data"):
        return d.report()
    checks = [("cuda-path", "cuda path", name, lambda c=check: c(d))
              for name, check in (("train (autocast, channels_last)", cuda_path.check_training),
                                  ("compile", cuda_path.check_compile),
                                  ("deterministic resume", cuda_path.check_resume),
                                  ("resume across device types", cuda_path.check_cross_device),
                                  ("divergence detection", cuda_path.check_divergence))]
    checks.append(("agreement", "agreement", "fp32 vs tf32 and bf16", lambda: cuda_path.check_agreement(d)))
    checks.append(("throughput", "throughput", "bench: ours vs conventional", lambda: throughput.check_bench(d)))
    checks += [("throughput", "throughput", f"{name} images/s",
                lambda n=name: throughput.check_images_per_second(d, n)) for name in d.throughput_models()]
    checks.append(("throughput", "throughput", "profile", lambda: throughput.check_profile(d)))
    checks.append(("compile-modes", "several nets", "compile modes", lambda: several_nets.check_compile_modes(d)))
    checks.append(("nets-at-once", "several nets", "nets at once", lambda: several_nets.check_nets_at_once(d)))
    checks.append(("packed", "several nets", "packed", lambda: several_nets.check_packing(d)))
    for group, section, name, check in checks:
        if opts.only is None or group in opts.only:
            d.guarded(section, name, check)
    return d.report()
