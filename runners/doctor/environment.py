"""The environment section: what this machine runs (torch, CUDA, the GPU, bf16, TF32, compile,
and whether Optuna and MLflow are installed: looked up, never imported)."""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil

import torch

from .context import Doctor


def environment(d: Doctor) -> None:
    s = "environment"
    d.add(s, "python", "info", platform.python_version())
    d.add(s, "torch", "info", torch.__version__, cuda_build=torch.version.cuda)
    cuda = torch.cuda.is_available()
    if not cuda:
        d.add(s, "CUDA", "skip" if d.opts.device in ("auto", "cpu") else "fail",
              "not available" + (f" (torch built for CUDA {torch.version.cuda})" if torch.version.cuda else ""))
    else:
        props = torch.cuda.get_device_properties(0)
        cap = torch.cuda.get_device_capability(0)
        d.add(s, "CUDA", "ok", f"{torch.version.cuda}, {torch.cuda.device_count()} device(s)")
        d.add(s, "cuDNN", "ok" if torch.backends.cudnn.is_available() else "fail",
              str(torch.backends.cudnn.version()))
        d.add(s, "GPU", "info", f"{props.name}, sm_{cap[0]}{cap[1]}, {props.total_memory / 2**30:.0f} GiB",
              name=props.name, capability=list(cap), memory_bytes=props.total_memory,
              multiprocessors=props.multi_processor_count)
        bf16 = torch.cuda.is_bf16_supported()
        d.add(s, "bf16", "ok" if bf16 else "skip",
              "supported" if bf16 else "not supported: train.precision bf16 is refused")
        d.add(s, "TF32", "info", f"{'available' if cap[0] >= 8 else 'not available'} (matmul allowed: "
              f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN allowed: {torch.backends.cudnn.allow_tf32})")
    compiler = compile_support()
    d.add(s, "torch.compile", "ok" if compiler is None else "skip", compiler or "available")
    d.add(s, "cpu", "info", f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    for module, needs in (("optuna", "ablate run/worker/status (studies)"),
                          ("mlflow", "ablate train/run logging and ablate figures")):
        found = importlib.util.find_spec(module) is not None  # found, not imported
        d.add(s, module, "ok" if found else "skip",
              "installed (not imported here)" if found else f"absent: skipped what needs it ({needs})")


def compile_support() -> str | None:
    """None if torch.compile (inductor) can work here, else why not."""
    if not hasattr(torch, "compile"):
        return "torch.compile missing"
    if torch.cuda.is_available() and importlib.util.find_spec("triton") is None:
        return "triton missing (inductor's CUDA code generator)"
    if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        return "no C++ compiler on PATH (inductor needs one)"
    return None

# -- data --
