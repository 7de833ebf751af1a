"""`ablate analyze SPEC`: the follow-up literature's probes on a finished study, from MLflow alone."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from ..study.progress import duration

ANALYSES = ("lesion", "landscape", "cka", "gradients", "signal")  # runners.analysis.analyze.ANALYSES
COST_HELP = {
    "images": "test images of the lesion errors (and of a net's BN statistics at init, gradients)",
    "draws": "random sets per k deleted blocks, and random reorderings per k swaps (lesion)",
    "train_images": "training images the loss landscape is evaluated on",
    "grid": "points of the 1D slice and of the interpolation between seeds (odd)",
    "grid2d": "points per axis of the 2D slice (odd)",
    "cka_images": "test images of CKA",
    "cka_batch": "CKA minibatch; below --cka-images: minibatch CKA with unbiased HSIC",
    "sweep_points": "points along each input sweep (gradients)",
    "sweeps": "pairs of test images swept (gradients)",
    "grad_batch": "training images of the per-layer gradient norms",
    "signal_images": "Gaussian inputs of the signal propagation plots",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..analysis.analyze import Options
    p.add_argument("spec", help="ablation spec (ablations/*.yaml) of a finished study (or any spec, with --init)")
    p.add_argument("--only", metavar="NAME,...", help=f"analyses to run (default: all): {', '.join(ANALYSES)}")
    p.add_argument("--init", action="store_true",
                   help="analyse the spec's variants at initialisation, untrained (signal propagation); "
                        "needs no study or store")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: MLFLOW_TRACKING_URI or results/mlflow.db)")
    p.add_argument("--variants", metavar="PATTERN,...",
                   help="only these variants: figure labels or model names, fnmatch wildcards ('plain-*')")
    p.add_argument("--seeds", metavar="S,...", help="only these seeds, e.g. 0,1")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field as in `ablate run` (repeatable)")
    p.add_argument("--out", default=None, help="output folder (default: results/figures/<study>/analysis)")
    cost = p.add_argument_group("cost (the defaults: seconds per CIFAR net on 2 CPU cores)")
    for f in dataclasses.fields(Options):
        cost.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default, metavar="N",
                          help=f"{COST_HELP.get(f.name, '')} (default {f.default})")


def run(args) -> int:
    from ..analysis.analyze import Options, Progress, analyze
    opts = Options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Options)})
    result = analyze(args.spec, overrides=args.overrides, only=args.only, tracking_uri=args.tracking_uri,
                     variants=args.variants, seeds=args.seeds, opts=opts, init=args.init, out=args.out,
                     progress=Progress(sys.stdout))
    for p in result.written:
        print(p)
    for n in result.notes:
        print(f"note: {n}")
    if result.logged_to and result.written:
        print(f"logged to the study's parent run {result.logged_to} under analysis/")
    if not result.written:
        print(f"nothing to do: every analysis is done for these runs ({result.out})")
    print(f"took {duration(result.seconds)}")
    return 0
