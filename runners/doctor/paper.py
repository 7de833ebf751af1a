"""The lab's first paper-scale numbers in one GPU call: plain-20 and ResNet-20 trained with He
2016a's CIFAR recipe (Sec. 4.2: 64k iterations, batch 128, lr 0.1 /10 at 32k and 48k, momentum
0.9, weight decay 1e-4, fp32, pad-crop-flip; all 50k training images; BN over 64 images, each of
the paper's two GPUs' share, as ablations/he2016a-fig6.yaml), packed into one step.

    python -m runners.doctor.paper --data /tmp/data/cifar10-jpeg --budget 360 --json $OUT/paper.json

Seed 0 of each net first, as one pack of 2 (the plain net is the option-A net's twin: the same
parameters, the identity terms at gain 0). Then, with the time left, as many more seeds of both
as the measured rate of larger packs says will finish (`ablate bench --pack`'s measurement, taken
first), as one pack. The JSON is rewritten after every epoch of every run: its curves (train
loss and error, test loss and error, lr) and, once finished, its final test error, so a run cut
short by the time limit leaves its rows. A run still training at the budget's end is stopped at
an epoch boundary and marked `cut`, with the epochs it reached.

Needs torch, torchvision, numpy and Pillow only (no Optuna, MLflow or tqdm), like `ablate doctor`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from models.registry import resolve

from ..train.bench import bench_packed
from ..train.config import DataConfig, TrainConfig
from ..train.data import load_dataset
from ..train.execution import resolve_device
from ..train.packed import Member, train_packed

PACKS = (2, 4, 8, 16)  # pack sizes measured: pairs (plain, residual) of seeds
MARGIN = 0.9  # a later pack starts only if its estimate fits in this share of the time left


class OutOfTime(Exception):
    """Raised by a run's on_epoch when the budget is spent: the run stops there, `cut`."""


class Report:
    """The JSON document, rewritten atomically after every change."""

    def __init__(self, path: Path | None, doc: dict) -> None:
        self.path, self.doc = path, doc

    def write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2))
        os.replace(tmp, self.path)


def members_for(seeds: list[int], cfg: TrainConfig, report: Report, deadline: float, pack: str,
                bn_batch: int | None = 64) -> list[Member]:
    """plain-20 and ResNet-20 of each seed, each logging its epochs into the report."""
    out = []
    for seed in seeds:
        for name in ("plain20", "resnet20"):
            row = {"model": name, "seed": seed, "pack": pack, "status": "running", "epochs": []}
            report.doc["runs"].append(row)

            def on_epoch(epoch: int, m: dict, row=row) -> None:
                row["epochs"].append({k: m[k] for k in ("epoch", "iteration", "train_loss", "train_error",
                                                        "test_loss", "test_error", "lr", "epoch_seconds")})
                report.write()
                if time.monotonic() > deadline:
                    raise OutOfTime(f"budget spent at epoch {epoch}")

            out.append(Member(resolve(name).replace(bn_batch=bn_batch), dataclasses.replace(cfg, seed=seed),
                              on_epoch=on_epoch, model_name=name))
    return out


def train_pack(members: list[Member], data, report: Report) -> float:
    """Train one pack; record each run's outcome; its wall seconds."""
    rows = report.doc["runs"][-len(members):]
    start = time.monotonic()
    for row, outcome in zip(rows, train_packed(members, data)):
        if isinstance(outcome, OutOfTime):
            row["status"] = "cut"
        elif isinstance(outcome, Exception):
            row["status"], row["error"] = "failed", f"{type(outcome).__name__}: {outcome}"
        else:
            row["status"] = outcome.status
            if outcome.final:
                row["final_test_error"] = outcome.final["test_error"]
        report.write()
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runners.doctor.paper", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="CIFAR-10 as an ImageFolder root (train/, test/), or synthetic")
    p.add_argument("--budget", type=float, required=True, help="seconds this may take, data loading included")
    p.add_argument("--json", help="the report, rewritten after every epoch")
    p.add_argument("--device", default="auto")
    p.add_argument("--iterations", type=int, default=64_000, help="per run (the paper: 64k)")
    p.add_argument("--subset", type=int, help="training images (default: all)")
    p.add_argument("--max-seeds", type=int, default=8, help="seeds per net at most")
    p.add_argument("--bn-batch", type=int, default=64,
                   help="BN statistics over sub-batches of this many images (the paper's 64 per GPU; 0: the whole "
                        "batch of 128)")
    args = p.parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget
    device = resolve_device(args.device)
    report = Report(Path(args.json) if args.json else None, {
        "what": "plain-20 and ResNet-20, He 2016a CIFAR recipe, packed", "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "torch": torch.__version__,
        "budget_s": args.budget, "iterations": args.iterations, "runs": []})
    data = load_dataset(DataConfig(args.data, val_size=0, subset=args.subset), device)
    cfg = TrainConfig(iterations=args.iterations, device=str(device), probe=False).validate()
    report.doc.update(dataset={"name": data.name, "train": len(data.train), "test": len(data.test)},
                      recipe={k: getattr(cfg, k) for k in ("iterations", "batch_size", "lr", "momentum", "weight_decay",
                                                            "precision")}
                      | {"bn_batch": args.bn_batch or None},
                      load_s=time.monotonic() - started)
    report.write()
    # The rates of larger packs, measured before anything trains (seconds).
    sizes = [k for k in PACKS if k <= 2 * args.max_seeds]
    bn_batch = args.bn_batch or None
    bench = bench_packed(resolve("resnet20").replace(bn_batch=bn_batch), data, device=device, packs=tuple(sizes),
                         batch_size=cfg.batch_size,
                         # on a CPU only the tests run this: one step shows the pack rates' order
                         steps=20 if device.type == "cuda" else 1, repeats=1,
                         warmup_steps=2 if device.type == "cuda" else 1)
    measured = [row for row in bench["packs"] if "packed" in row]  # not the sizes out of memory
    step_s = {row["k"]: row["k"] * cfg.batch_size / row["packed"] for row in measured}
    report.doc["pack_rates"] = [{k: row[k] for k in ("k", "packed", "separate", "ratio")} for row in measured]
    report.write()

    first = train_pack(members_for([0], cfg, report, deadline, "2", bn_batch), data, report)
    # The first pack's wall time, evaluation included, scaled by the step times of larger packs.
    left, per_step = deadline - time.monotonic(), first / step_s[2]
    fits = [k for k in step_s if k > 2 and per_step * step_s[k] <= MARGIN * left]
    report.doc["plan"] = {"first_pack_s": first, "left_s": left, "chosen": max(fits, default=0),
                          "estimates_s": {k: per_step * step_s[k] for k in step_s if k > 2}}
    report.write()
    if fits and all(r["status"] == "finished" for r in report.doc["runs"]):
        k = max(fits)
        train_pack(members_for(list(range(1, k // 2 + 1)), cfg, report, deadline, str(k), bn_batch), data, report)
    report.doc["seconds"] = time.monotonic() - started
    report.write()
    for r in report.doc["runs"]:
        err = r.get("final_test_error")
        print(f"{r['model']} seed {r['seed']} (pack {r['pack']}): {r['status']}, {len(r['epochs'])} epochs"
              + (f", test error {err:.4f}" if err is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
