"""One trial on several processes (gloo on the CPU): DDP computes the single-process step, the
checkpoint is written once and resumed on every rank after a rank dies, and MLflow sees one run."""
import os
import signal
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import ablate, ablate_forked, rank_pid

from models import ArchSpec
from models.network import ResNet
from runners.tracking import store as tracking
from runners.train import distributed
from runners.train.config import DataConfig, TrainConfig
from runners.train.data import load_dataset
from runners.train.checkpoint import CHECKPOINT, load_checkpoint
from runners.train.evaluation import evaluate
from runners.train.execution import MixedPrecision
from runners.train.trainer import make_optimizer, train

TINY = ArchSpec(depth=8)
DATA = DataConfig("synthetic", subset=180, val_size=60)  # 120 train: 3 steps of the global batch 40
# One thread, as each rank has: float sums in another order (more threads) drift by ~1e-3 within
# ten steps of these tiny-batch BN nets, which would hide what is compared.
CFG = TrainConfig(epochs=1, batch_size=40, schedule="constant", threads=1, probe=False, deterministic=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, checkpoint_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    ctx = distributed.init(torch.device("cpu"))
    assert ctx.world == world and ctx.is_main == (rank == 0)
    try:
        train(TINY, CFG, DATA, checkpoint_dir=checkpoint_dir)
    finally:
        distributed.finish()


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_two_ddp_processes_take_the_single_process_step_with_bn_over_each_half(tmp_path):
    """Without ghost BN (`bn_batch` is not in models/ yet) the single-process reference takes each
    step over the batch of 2B as two sub-batches of B (train-mode BN statistics over B, the
    gradients averaged), exactly what DDP computes; the weights must agree within float
    tolerance. BN running statistics are not compared: DDP keeps rank 0's."""
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]  # written once, by rank 0
    state = load_checkpoint(tmp_path / CHECKPOINT)

    data = load_dataset(DATA)
    torch.set_num_threads(1)
    torch.manual_seed(CFG.seed)
    model = ResNet(TINY, num_classes=data.num_classes).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, CFG)
    half = CFG.batch_size // 2
    steps = 0
    for x, y in data.train_batches(1, CFG.batch_size, torch.Generator().manual_seed(CFG.seed), seed=CFG.seed):
        model.train()
        opt.zero_grad()
        for part in (slice(0, half), slice(half, None)):
            (F.cross_entropy(model(x[part].contiguous(memory_format=torch.channels_last)), y[part]) / 2).backward()
        opt.step()
        steps += 1
    assert steps == state["iteration"] == 3
    params = dict(model.named_parameters())
    for name, p in params.items():
        torch.testing.assert_close(state["model"][name], p.detach(), rtol=1e-4, atol=1e-5)
    # The sharded evaluation, summed over the ranks, is the whole split's.
    saved = ResNet(TINY, num_classes=data.num_classes)
    saved.load_state_dict(state["model"])
    scores = evaluate(MixedPrecision(saved, False), data, data.val, CFG)
    val_loss, val_error = scores["loss"], scores["error"]
    assert state["history"][0]["val_error"] == pytest.approx(val_error)
    assert state["history"][0]["val_loss"] == pytest.approx(val_loss, rel=1e-5)


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_a_killed_rank_is_resumed_from_the_checkpoint_with_one_mlflow_run_per_attempt(tmp_path, results):
    ckpt, uri = tmp_path / "ckpt", f"sqlite:///{tmp_path}/mlflow.db"
    args = ["train", "resnet8", "--dataset", "synthetic", "--subset", "200", "--val-size", "40",
            "--epochs", "12", "--batch-size", "40", "--device", "cpu", "--no-probe", "--deterministic",
            "--nproc-per-node", "2", "--checkpoint-dir", ckpt, "--tracking-uri", uri, "--experiment", "ddp"]
    first = ablate_forked(*args)
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt / CHECKPOINT).exists() and first.poll() is None:
        time.sleep(0.05)
    victim = rank_pid(first.pid, 1)
    assert victim is not None and (ckpt / CHECKPOINT).exists(), first.communicate(timeout=60)
    os.kill(victim, signal.SIGKILL)
    out, err = first.communicate(timeout=120)
    assert first.returncode != 0, out
    killed_at = load_checkpoint(ckpt / CHECKPOINT)["epoch"]
    assert 1 <= killed_at < 12 and "epoch   1" in out

    client = tracking.client(uri)
    runs = lambda: client.search_runs([client.get_experiment_by_name("ddp").experiment_id])  # noqa: E731
    assert len(runs()) == 1  # rank 0 alone talks to MLflow

    second = ablate(*args, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"resuming from {ckpt / CHECKPOINT} after epoch {killed_at}" in second.stdout
    assert "finished: 12 epochs" in second.stdout
    assert len(runs()) == 2  # one per attempt, not one per rank
    final = [r for r in runs() if r.info.status == "FINISHED"]
    assert len(final) == 1
    assert len(client.get_metric_history(final[0].info.run_id, "val_error")) == 12  # the full curve
    state = load_checkpoint(ckpt / CHECKPOINT)
    assert state["status"] == "finished" and [m["epoch"] for m in state["history"]] == list(range(1, 13))
