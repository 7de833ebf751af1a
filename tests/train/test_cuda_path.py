"""The CUDA path's failure modes, reproduced on a CPU: checkpoints resumed on another device type or
with fewer GPUs, torch.compile in a long-lived worker, the precision (true fp32 by default, TF32 and
bf16 only when asked for), the fp32 head, deterministic mode's process settings, and workers placed
on the GPUs the parent was given."""
import os

import pytest
import torch

from models import ArchSpec
from models.network import ResNet
from runners.study import host
from runners.train.config import DataConfig, TrainConfig
from runners.train.data import load_dataset
from runners.train.checkpoint import CHECKPOINT, load_checkpoint, restore_generator
from runners.errors import ConfigError
from runners.train.config import from_mapping
from runners.train.execution import (MixedPrecision, compile_forward, eval_batch_size, precision_on, runtime,
                                     use_bf16)
from runners.train.trainer import train

TINY = ArchSpec(depth=8)


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig("synthetic", subset=300, val_size=50))


def recipe(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=2, batch_size=64, schedule="constant", deterministic=True,
                                 threads=2, probe=False), **kw})


class Stop(Exception):
    pass


def stop_after_first(epoch, metrics):
    raise Stop


def first_epoch_checkpoint(data, path):
    with pytest.raises(Stop):
        train(TINY, recipe(), data, checkpoint_dir=path, on_epoch=stop_after_first)
    return load_checkpoint(path / CHECKPOINT)


def history(result):
    return [{k: v for k, v in m.items() if k not in ("epoch_seconds", "images_per_second")} for m in result.history]


def test_the_checkpoint_holds_the_generator_with_its_device_type_and_no_cuda_states(data, tmp_path):
    saved = first_epoch_checkpoint(data, tmp_path)
    assert set(saved["rng"]) == {"torch", "augment"}  # no per-GPU CUDA states (training draws none)
    assert saved["rng"]["augment"]["device"] == "cpu" and saved["rng"]["augment"]["state"].numel() == 5056


@pytest.mark.slow
@pytest.mark.parametrize("foreign", [
    {"device": "cuda", "state": torch.zeros(16, dtype=torch.uint8)},  # a CUDA generator's state
    torch.zeros(16, dtype=torch.uint8),  # the same, as saved before the device type was stored
])
def test_a_checkpoint_from_another_device_type_resumes_reseeded_and_deterministically(data, tmp_path, foreign):
    saved = first_epoch_checkpoint(data, tmp_path)
    saved["rng"]["augment"] = foreign
    saved["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 4  # 4 GPUs' states, as torch saved them
    runs = []
    for attempt in ("a", "b"):
        path = tmp_path / attempt
        path.mkdir()
        torch.save(saved, path / CHECKPOINT)
        runs.append(train(TINY, recipe(), data, checkpoint_dir=path))
    assert runs[0].status == "finished" and runs[0].epochs == 2
    assert history(runs[0]) == history(runs[1])  # the same checkpoint resumes the same way
    whole = train(TINY, recipe(), data)
    assert history(runs[0])[0] == history(whole)[0]  # the first epoch is the checkpoint's
    assert history(runs[0])[1] != history(whole)[1]  # the second ran on the reseeded order


def test_restore_generator_sets_its_own_device_type_and_reseeds_another():
    gen = torch.Generator().manual_seed(7)
    state = {"device": "cpu", "state": gen.get_state()}
    expected = torch.rand(3, generator=gen)
    assert restore_generator(torch.Generator(), state, seed=1, epoch=2)
    g = torch.Generator()
    restore_generator(g, state, seed=1, epoch=2)
    assert torch.equal(torch.rand(3, generator=g), expected)
    assert not restore_generator(g, {"device": "cuda", "state": torch.zeros(16, dtype=torch.uint8)}, seed=1, epoch=2)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(2**20 + 2)))


@pytest.mark.slow
def test_every_new_architecture_in_one_process_is_compiled():
    # A study worker trains variant after variant in one process; torch's recompile limit (8)
    # once made the 9th architecture run eager with only a warning.
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    x = torch.randn(2, 3, 32, 32)
    for depth in (8, 14, 20, 26, 32, 38, 44, 50, 56, 62):
        before = len(graphs)
        net = MixedPrecision(ResNet(ArchSpec(depth=depth)), amp=False).eval()
        with torch.no_grad():
            compile_forward(net, backend=counting)(x)
        assert len(graphs) > before, f"depth {depth} ran eager"


def test_bf16_autocast_only_for_precision_bf16(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert TrainConfig().precision == "fp32"  # the default everywhere: the papers' fp32
    assert not use_bf16(TrainConfig(), cuda) and not use_bf16(TrainConfig(precision="tf32"), cuda)
    assert use_bf16(TrainConfig(precision="bf16"), cuda)
    assert use_bf16(TrainConfig(precision="bf16"), torch.device("cpu"))  # allowed there, slow
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ConfigError, match="does not support bf16"):
        use_bf16(TrainConfig(precision="bf16"), cuda)
    assert not use_bf16(TrainConfig(), cuda)
    assert precision_on(TrainConfig(precision="tf32"), torch.device("cpu")) == "fp32"
    assert precision_on(TrainConfig(precision="tf32"), cuda) == "tf32"


def test_the_precision_field_is_checked():
    with pytest.raises(ConfigError, match="precision must be one of fp32, tf32, bf16, got 'fp16'"):
        TrainConfig(precision="fp16").validate()
    with pytest.raises(ConfigError, match="amp"):  # the old field is gone, not silently ignored
        from_mapping(TrainConfig, {"amp": "off"}, "train")
    assert from_mapping(TrainConfig, {"precision": "bf16"}, "train").precision == "bf16"


@pytest.mark.parametrize("precision,tf32", [("fp32", False), ("tf32", True), ("bf16", False)])
def test_runtime_sets_tf32_for_the_run_and_restores_it(precision, tf32):
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32, cudnn.allow_tf32 = not tf32, not tf32  # what the process had
        with runtime(TrainConfig(precision=precision), torch.device("cpu")):
            assert (matmul.allow_tf32, cudnn.allow_tf32) == (tf32, tf32)
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (not tf32, not tf32)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def test_a_run_records_its_precision(data):
    logged = {}

    class Fake:
        def __getattr__(self, name):
            return lambda *a, **k: logged.setdefault(name, []).append(a)
    train(TINY, recipe(epochs=1, precision="tf32"), data, tracker=Fake())
    config = next(d for d, name in logged["log_dict"] if name == "config.json")
    assert config["precision"] == "fp32" and config["train"]["precision"] == "tf32"  # tf32 is fp32 on a CPU


def test_the_head_runs_in_fp32_under_autocast():
    model = ResNet(TINY)
    seen = {}
    model.stem.conv.register_forward_hook(lambda m, i, o: seen.update(conv=o.dtype))
    model.head.fc.register_forward_hook(lambda m, i, o: seen.update(fc=(i[0].dtype, o.dtype)))
    out = MixedPrecision(model, amp=True)(torch.randn(4, 3, 32, 32))
    assert seen["conv"] == torch.bfloat16 and seen["fc"] == (torch.float32, torch.float32)
    assert out.dtype == torch.float32


def test_eval_batch_by_device_unless_given():
    assert eval_batch_size(TrainConfig(), torch.device("cpu")) == 250
    assert eval_batch_size(TrainConfig(), torch.device("cuda")) == 1000
    assert eval_batch_size(TrainConfig(eval_batch_size=64), torch.device("cuda")) == 64


def test_deterministic_mode_skips_filling_uninitialized_memory_and_restores_it():
    det = torch.utils.deterministic
    before = det.fill_uninitialized_memory
    with runtime(TrainConfig(deterministic=True), torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() and det.fill_uninitialized_memory is False
    assert det.fill_uninitialized_memory == before and not torch.are_deterministic_algorithms_enabled()


def test_the_cli_sets_the_cublas_workspace_before_any_command_runs(monkeypatch, capsys):
    from runners.cli import main
    from runners.commands import bench
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = []  # what the command finds when it starts
    monkeypatch.setattr(bench, "run", lambda args: seen.append(os.environ.get("CUBLAS_WORKSPACE_CONFIG")) or 0)
    assert main(["bench", "--steps", "0"]) == 0
    assert seen == [":4096:8"] and os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"


# -- workers on the parent's GPUs ------------------------------------------------------------------
@pytest.mark.parametrize("visible,gpus,expected", [
    (None, 2, ["0", "1", "0", "1"]),
    ("4,5", 0, []),  # CPU workers: no devices to hand out
    ("4,5", 2, ["4", "5", "4", "5"]),  # not physical 0 and 1
    ("GPU-aaaa, GPU-bbbb", 2, ["GPU-aaaa", "GPU-bbbb", "GPU-aaaa", "GPU-bbbb"]),
    ("MIG-1234,MIG-5678", 1, ["MIG-1234"] * 4),  # torch counts the first MIG instance only
    ("3,7,bogus,9", 2, ["3", "7", "3", "7"]),  # torch stops at an invalid entry
])
def test_workers_index_into_the_parents_visible_devices(visible, gpus, expected):
    assert host.worker_devices(4, gpus, visible) == expected


def test_spawned_workers_get_their_device_and_a_share_of_the_cores(monkeypatch):
    launched = []

    class FakePopen:
        def __init__(self, cmd, env):
            launched.append((cmd, env))

        def wait(self):
            return 0
    monkeypatch.setattr(host.subprocess, "Popen", FakePopen)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    command = host.WorkerCommand("s.yaml")
    assert host.spawn_workers(host.WorkerPlan(workers=4, gpus=2, group=1, threads=4), command,
                              "journal", "sqlite:///x") == 0
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in launched] == ["4", "5", "4", "5"]
    # The stores travel in the environment, never on a command line (any local user can read one).
    assert all("journal" not in cmd and "sqlite:///x" not in cmd for cmd, _ in launched)
    assert all((env["ABLATE_STORAGE"], env["MLFLOW_TRACKING_URI"]) == ("journal", "sqlite:///x") for _, env in launched)
    assert all(cmd[cmd.index("--threads") + 1] == "4" and cmd[cmd.index("--device") + 1] == "cuda"
               for cmd, _ in launched)
    # Trials on 2 GPUs each (resources.gpus_per_trial): each worker, a process group, gets its own pair.
    launched.clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert host.spawn_workers(host.WorkerPlan(workers=2, gpus=4, group=2, threads=8), command,
                              "journal", "sqlite:///x") == 0
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in launched] == ["4,5", "6,7"]


def test_default_workers_per_gpu_follows_the_model_size_and_the_cores():
    assert host.default_workers_per_gpu(41_000_000, cores=16, gpus=1) == 4  # ResNet-20
    assert host.default_workers_per_gpu(253_000_000, cores=16, gpus=1) == 4  # ResNet-110
    assert host.default_workers_per_gpu(1_490_000_000, cores=16, gpus=1) == 2  # ResNet-1001
    assert host.default_workers_per_gpu(4_090_000_000, cores=16, gpus=1) == 1  # ResNet-50
    assert host.default_workers_per_gpu(41_000_000, cores=8, gpus=4) == 2  # a core per worker
    assert host.default_workers_per_gpu(41_000_000, cores=2, gpus=4) == 1
