"""The CUDA path: the trainer's training (bf16 autocast where the GPU has it, channels_last),
compile, a bit-exact deterministic resume, a CPU checkpoint resumed on the GPU, divergence
detection; and the agreement of true fp32 with tf32 and bf16 runs of the same short training, on
ResNet-110 and He 2016b's gated ResNet-110 at b_g = -6 (8 layers on a CPU)."""
from __future__ import annotations

import dataclasses
import tempfile
import time

import torch

from models.spec import ArchSpec

from ..train.execution import use_bf16
from ..train.trainer import train
from .context import TINY, Check, Doctor
from .environment import compile_support

# fp32 vs tf32 or bf16: the same 3-epoch training's final training loss may differ by this much
# (absolute, nats) and its test error by AGREE_ERROR; rounding changes the trajectory, not the level.
AGREE_LOSS, AGREE_ERROR = 0.15, 0.10


def _bf16_here(d: Doctor) -> bool:
    return d.device.type != "cuda" or torch.cuda.is_bf16_supported()


def check_training(d: Doctor) -> Check:
    # The autocast path on a GPU (an opt-in there: the default is fp32); fp32 on a CPU, where bf16 is slow.
    bf16 = d.device.type == "cuda" and _bf16_here(d)
    cfg = d.recipe(epochs=2 if d.opts.quick else 3, precision="bf16" if bf16 else "fp32")
    r = train(TINY, cfg, d.small)
    h = r.history
    learned = r.status == "finished" and h[-1]["train_loss"] < h[0]["train_loss"]
    return d.add("cuda path", "train (autocast, channels_last)", "ok" if learned else "fail",
                 f"{r.status}, train loss {h[0]['train_loss']:.3f} -> {h[-1]['train_loss']:.3f}, "
                 f"bf16 {'on' if use_bf16(cfg, d.device) else 'off'}, channels_last",
                 history=h)


def check_compile(d: Doctor) -> Check:
    why = compile_support()
    if why:
        return d.add("cuda path", "compile", "skip", why)
    if d.opts.quick and d.device.type == "cpu":
        return d.add("cuda path", "compile", "skip", "--quick on CPU: compiling takes minutes here")
    eager = train(TINY, d.recipe(epochs=1), d.small).final
    t = time.perf_counter()
    compiled = train(TINY, d.recipe(epochs=1, compile=True), d.small).final
    seconds = time.perf_counter() - t
    close = abs(compiled["train_loss"] - eager["train_loss"]) < AGREE_LOSS
    return d.add("cuda path", "compile", "ok" if close else "fail",
                 f"train loss {compiled['train_loss']:.3f} (eager {eager['train_loss']:.3f}), {seconds:.0f} s "
                 "incl. compilation", eager=eager, compiled=compiled)


def check_resume(d: Doctor) -> Check:

    class Stop(Exception):
        pass

    def stop(epoch, metrics):
        raise Stop
    cfg = d.recipe(epochs=2, deterministic=True)
    whole = train(TINY, cfg, d.small)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            train(TINY, cfg, d.small, checkpoint_dir=tmp, on_epoch=stop)
        except Stop:
            pass
        resumed = train(TINY, cfg, d.small, checkpoint_dir=tmp)
    keys = ("train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error")
    a = [[m[k] for k in keys] for m in whole.history]
    b = [[m[k] for k in keys] for m in resumed.history]
    return d.add("cuda path", "deterministic resume", "ok" if a == b else "fail",
                 "bit-exact" if a == b else "differs from the uninterrupted run", whole=a, resumed=b)


def check_cross_device(d: Doctor) -> Check:
    """Epoch 1 on the CPU, resumed on the device: the generator is reseeded, not crashed."""
    if d.device.type != "cuda":
        return d.add("cuda path", "resume across device types", "skip", "needs a CUDA device "
                     "(tests/test_cuda_path.py covers the CPU side)")

    class Stop(Exception):
        pass

    def stop(epoch, metrics):
        raise Stop
    with tempfile.TemporaryDirectory() as tmp:
        try:
            train(TINY, dataclasses.replace(d.recipe(), device="cpu"), d.small.to("cpu"),
                  checkpoint_dir=tmp, on_epoch=stop)
        except Stop:
            pass
        r = train(TINY, d.recipe(), d.small, checkpoint_dir=tmp)
    ok = r.status == "finished" and r.epochs == 2
    return d.add("cuda path", "resume across device types", "ok" if ok else "fail",
                 f"CPU epoch 1 -> {d.device.type} epoch 2: {r.status}")


def check_divergence(d: Doctor) -> Check:
    r = train(TINY, d.recipe(epochs=2, lr=1e4), d.small)
    return d.add("cuda path", "divergence detection", "ok" if r.status == "diverged" else "fail",
                 f"lr 1e4: {r.status} after {r.epochs} finite epoch(s)")

# -- agreement --


# The nets whose agreement decides which precisions the paper specs may take: the identity-shortcut
# ResNet-110 (he2016a-*, he2016b-table2/3/4) and He 2016b Table 1's exclusive gate at b_g = -6,
# whose carry 1 - sigmoid(-6) = 0.99753 rounds to 0.99609 in bf16. On a CPU (and with --quick)
# the same nets at 8 layers: a trend check of the code path, in seconds.
AGREEMENT_NETS = {"identity": ArchSpec(depth=110), "gated": ArchSpec(depth=110, shortcut="gate", gate_bias=-6.0)}
SPECS_OF = {"identity": "he2016a-*, he2016b-table2/3/4", "gated": "he2016b-table1's gates"}


def _agreement_net(d: Doctor, kind: str) -> ArchSpec:
    arch = AGREEMENT_NETS[kind]
    return arch if d.device.type == "cuda" and not d.opts.quick else dataclasses.replace(arch, depth=8)


def check_agreement(d: Doctor) -> Check:
    """True fp32 against tf32 (on CUDA; a CPU has no TF32) and bf16 (where the device has it), on
    a short training of each net of AGREEMENT_NETS; says which precisions are safe for which specs."""
    lower = (["tf32"] if d.device.type == "cuda" else []) + (["bf16"] if _bf16_here(d) else [])
    epochs = 1 if d.device.type == "cuda" or d.opts.quick else 2
    runs, gaps = {}, {}
    for kind in AGREEMENT_NETS:
        arch = _agreement_net(d, kind)
        runs[kind] = {p: train(arch, d.recipe(epochs=epochs, precision=p, deterministic=True), d.small).final
                      for p in ["fp32", *lower]}
        fp32 = runs[kind]["fp32"]
        gaps[kind] = {p: (abs(fp32["train_loss"] - runs[kind][p]["train_loss"]),
                          abs(fp32["test_error"] - runs[kind][p]["test_error"])) for p in lower}
    safe = {kind: [p for p, (dl, de) in g.items() if dl <= AGREE_LOSS and de <= AGREE_ERROR]
            for kind, g in gaps.items()}
    agree = [p for p in lower if all(p in s for s in safe.values())]
    differ = [p for p in lower if p not in agree]
    nets = ", ".join(f"{kind} {_agreement_net(d, kind).depth}" for kind in AGREEMENT_NETS)
    value = (f"fp32 agrees with {', '.join(agree) or 'none'}"
             + (f"; differs from {', '.join(differ)}" if differ else "")
             + "".join(f"; safe for {SPECS_OF[k]}: fp32{''.join(', ' + p for p in s)}" for k, s in safe.items())
             + "".join(f"; {k} {p}: |d train loss| {dl:.3f}, |d test error| {de:.3f}"
                       for k, g in gaps.items() for p, (dl, de) in g.items())
             + f" (<= {AGREE_LOSS}, <= {AGREE_ERROR}; nets: {nets}, {epochs} epoch(s))"
             + ("" if "tf32" in lower else "; tf32: none here (fp32 on a CPU)")
             + ("" if "bf16" in lower else "; bf16: not supported here"))
    return d.add("agreement", "fp32 vs tf32 and bf16", "ok" if not differ else "fail", value, runs=runs,
                 agree=agree, safe={SPECS_OF[k]: ["fp32", *s] for k, s in safe.items()},
                 nets={k: _agreement_net(d, k).depth for k in AGREEMENT_NETS},
                 tolerance={"train_loss": AGREE_LOSS, "test_error": AGREE_ERROR})

# -- throughput --
