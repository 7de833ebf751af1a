"""The CUDA path: the trainer's training (bf16 autocast, channels_last), compile, a bit-exact
deterministic resume, a CPU checkpoint resumed on the GPU, divergence detection; and the
agreement of fp32 and bf16 runs of the same short training."""
from __future__ import annotations

import dataclasses
import tempfile
import time

from ..train.execution import use_amp
from ..train.trainer import train
from .context import TINY, Check, Doctor
from .environment import compile_support

# fp32 vs bf16: the same 3-epoch training's final training loss may differ by this much (absolute,
# nats) and its test error by AGREE_ERROR; bf16 rounding changes the trajectory, not the level.
AGREE_LOSS, AGREE_ERROR = 0.15, 0.10


def check_training(d: Doctor) -> Check:
    cfg = d.recipe(epochs=2 if d.opts.quick else 3)
    r = train(TINY, cfg, d.small)
    h = r.history
    learned = r.status == "finished" and h[-1]["train_loss"] < h[0]["train_loss"]
    return d.add("cuda path", "train (autocast, channels_last)", "ok" if learned else "fail",
                 f"{r.status}, train loss {h[0]['train_loss']:.3f} -> {h[-1]['train_loss']:.3f}, "
                 f"bf16 {'on' if use_amp(cfg, d.device) else 'off'}, channels_last",
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


def check_agreement(d: Doctor) -> Check:
    runs = {amp: train(TINY, d.recipe(epochs=2 if d.opts.quick else 3, amp=amp, deterministic=True), d.small).final
            for amp in ("off", "bf16")}
    dl = abs(runs["off"]["train_loss"] - runs["bf16"]["train_loss"])
    de = abs(runs["off"]["test_error"] - runs["bf16"]["test_error"])
    ok = dl <= AGREE_LOSS and de <= AGREE_ERROR
    return d.add("agreement", "fp32 vs bf16", "ok" if ok else "fail",
                 f"|d train loss| {dl:.3f} (<= {AGREE_LOSS}), |d test error| {de:.3f} (<= {AGREE_ERROR})",
                 fp32=runs["off"], bf16=runs["bf16"], tolerance={"train_loss": AGREE_LOSS,
                                                                    "test_error": AGREE_ERROR})

# -- throughput --
