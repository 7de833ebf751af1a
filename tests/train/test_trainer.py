"""The trainer on tiny nets and synthetic data: it learns, resumes exactly, survives divergence,
warms up and comes back, and leaves the MLflow contract's params, tags, metrics and artifacts."""
import json
from pathlib import Path

import pytest
import torch
from conftest import ablate, assert_one_line_error

from models import ArchSpec, ConfigError
from models.network import ResNet
from runners.tracking import naming, tracker as tracking
from runners.tracking.store import client as store_client
from runners.train.config import DataConfig, TrainConfig
from runners.train.data import load_dataset
from runners.train.checkpoint import CHECKPOINT, load_checkpoint
from runners.train.execution import resolve_device
from runners.train.schedule import LRSchedule, Plan
from runners.train.trainer import train

TINY = ArchSpec(depth=8)  # 3 stages of one basic block: 75k parameters
DATA_CFG = DataConfig("synthetic", subset=600, val_size=100)  # 500 train, 100 val, 120 test
CONTRACT_METRICS = ("train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error",
                    "lr", "epoch_seconds", "images_per_second", "iteration")
RESULT_KEYS = ("train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error", "lr", "iteration")


@pytest.fixture(scope="module")
def data():
    return load_dataset(DATA_CFG)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    return store_client(uri)


def recipe(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=32, schedule="constant", deterministic=True, threads=2)
    return TrainConfig(**{**base, **kw})


def numbers(history):
    return [{k: m[k] for k in RESULT_KEYS} for m in history]


@pytest.mark.slow
def test_a_small_net_learns_the_synthetic_task(data):
    result = train(TINY, recipe(epochs=4, schedule="step"), data)
    assert result.status == "finished" and result.epochs == 4
    assert result.final["train_error"] < 0.3 and result.final["test_error"] < 0.4  # chance: 0.9
    assert result.history[0]["train_error"] > result.final["train_error"]
    assert result.best_val_error == min(m["val_error"] for m in result.history)
    assert [m["iteration"] for m in result.history] == [15, 30, 45, 60]  # 500 // 32 steps per epoch
    # The layer-response probe: one finite std per 3x3 layer, in depth order (He 2016a Fig. 7).
    names = [n for n, _ in ResNet(TINY).response_modules()]
    assert [r["layer"] for r in result.responses] == names
    assert [r["index"] for r in result.responses] == list(range(len(names)))
    assert all(0 < r["std"] < 100 for r in result.responses)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_numbers(data, tmp_path, store):
    cfg = recipe(epochs=3, schedule="step", warmup=True)
    whole = train(TINY, cfg, data)

    class Interrupted(Exception):
        pass

    def stop_after_first(epoch, metrics):
        if epoch == 1:
            raise Interrupted
    with pytest.raises(Interrupted):  # on_epoch's exception propagates unchanged
        train(TINY, cfg, data, checkpoint_dir=tmp_path, on_epoch=stop_after_first)
    saved = load_checkpoint(tmp_path / CHECKPOINT)  # weights_only=True inside
    assert saved["epoch"] == 1 and saved["status"] == "running" and len(saved["history"]) == 1

    tracker = tracking.Tracker.start(store, "resume", "resumed")
    with tracking.tracked_run(tracker):
        resumed = train(TINY, cfg, data, checkpoint_dir=tmp_path, tracker=tracker)
    assert numbers(resumed.history) == numbers(whole.history)  # exact, not approximate
    assert resumed.responses == whole.responses
    # The resumed attempt's MLflow run still has the complete curves.
    steps = [m.step for m in store.get_metric_history(tracker.run_id, "test_error")]
    assert steps == [1, 2, 3]

    # A finished checkpoint is a result: returned without training again.
    def never(epoch, metrics):
        raise AssertionError("trained again")
    again = train(TINY, cfg, data, checkpoint_dir=tmp_path, on_epoch=never)
    assert numbers(again.history) == numbers(whole.history) and again.status == "finished"
    # ... and a checkpoint of another configuration is refused, not silently mixed in.
    with pytest.raises(ConfigError, match="train.lr"):
        train(TINY, recipe(epochs=3, schedule="step", warmup=True, lr=0.05), data, checkpoint_dir=tmp_path)


def test_divergence_is_a_result_not_a_crash(data, store, tmp_path):
    tracker = tracking.Tracker.start(store, "diverge", "huge-lr")
    with tracking.tracked_run(tracker):
        result = train(TINY, recipe(lr=1e4), data, tracker=tracker, checkpoint_dir=tmp_path)
    assert result.status == "diverged" and result.epochs < 3
    run = store.get_run(tracker.run_id)
    assert run.data.tags["diverged"] == "true" and run.info.status == "FINISHED"
    assert (run.data.tags["precision"], run.data.tags["device"]) == ("fp32", "cpu")  # as it computed
    assert load_checkpoint(tmp_path / CHECKPOINT)["status"] == "diverged"


@pytest.mark.slow
def test_warmup_returns_to_the_base_lr_and_composes_with_the_steps(data):
    # 4 epochs of 15 steps, a step at epoch 3 by 0.5: on this task the running training error
    # falls below 80% in epoch 2 or 3 (where depends on the trajectory); each epoch's lr is that
    # of its last step, so the warm-up shows in epoch 1 (maybe 2), then 0.1, and the step in epoch 4.
    cfg = recipe(epochs=4, schedule="step", milestones=(3,), gamma=0.5, warmup=True, warmup_until_error=0.8)
    lrs = [m["lr"] for m in train(TINY, cfg, data).history]
    warm = lrs.index(pytest.approx(0.1))
    assert 1 <= warm <= 2 and lrs[:warm] == [0.01] * warm
    assert lrs[warm:] == [pytest.approx(0.1)] * (3 - warm) + [pytest.approx(0.05)]


def test_lr_schedule_unit():
    cfg = TrainConfig(iterations=100, lr=0.1, warmup=True, warmup_lr=0.01, warmup_until_error=0.8)
    s = LRSchedule(cfg, Plan.of(cfg, 1000))
    assert s.boundaries == [50, 75]  # the paper's 1/2 and 3/4 (32k and 48k of 64k)
    assert s.lr(0) == 0.01
    for k in range(5):
        s.observe(k, 0.9)
    assert s.warming and s.lr(5) == 0.01
    for k in range(5, 40):
        s.observe(k, 0.5)
    assert not s.warming and s.lr(40) == 0.1 and s.lr(60) == pytest.approx(0.01) and s.lr(80) == pytest.approx(0.001)
    s.observe(41, 0.95)  # it never comes back
    assert s.lr(41) == 0.1
    # The warm-up never raises the lr above the schedule.
    late = LRSchedule(cfg, Plan.of(cfg, 1000))
    assert late.lr(80) == pytest.approx(0.001)
    cos = LRSchedule(TrainConfig(epochs=2, schedule="cosine"), Plan(10, 2, 20))
    assert cos.lr(0) == 0.1 and cos.lr(10) == pytest.approx(0.05) and cos.lr(20) == pytest.approx(0.0)
    # He 2016b: a fixed 400-iteration warm-up (here 3), whatever the training error.
    fixed = LRSchedule(TrainConfig(iterations=100, warmup=True, warmup_iterations=3), Plan.of(cfg, 1000))
    lrs = []
    for k in range(5):
        lrs.append(fixed.lr(k))
        fixed.observe(k, 0.99)
    assert lrs == [0.01, 0.01, 0.01, 0.1, 0.1]


def test_plateau_divides_the_lr_when_the_validation_error_stops_improving():
    cfg = TrainConfig(epochs=20, schedule="plateau", plateau_patience=2, plateau_threshold=0.01)
    s = LRSchedule(cfg, Plan.of(cfg, 1000))
    lrs = []
    # The test error is never read: a falling test error would not stop the drop.
    for val in (0.5, 0.4, 0.395, 0.39, 0.3, 0.3, 0.3, 0.3):
        lrs.append(s.lr(0))
        s.epoch_end({"train_error": 0.0, "val_error": val, "test_error": 0.01 * len(lrs)})
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001])
    resumed = LRSchedule(cfg, Plan.of(cfg, 1000))
    resumed.load_state_dict(s.state_dict())  # checkpointed: a resumed run keeps its drops and patience
    assert resumed.lr(0) == pytest.approx(0.001)
    assert (resumed.drops, resumed.best, resumed.stale) == (s.drops, s.best, s.stale)
    # Without a validation split, the training error decides.
    no_val = LRSchedule(cfg, Plan.of(cfg, 1000))
    for train_error in (0.5, 0.5, 0.5):
        no_val.epoch_end({"train_error": train_error})
    assert no_val.lr(0) == pytest.approx(0.01)


def test_iteration_length_ends_mid_epoch(data):
    result = train(TINY, TrainConfig(iterations=10, batch_size=64, probe=False), data)
    assert [m["iteration"] for m in result.history] == [7, 10] and result.responses is None


@pytest.mark.slow
def test_the_mlflow_store_holds_the_contract(data, store):
    cfg = recipe(epochs=2)
    tracker = tracking.Tracker.start(store, "contract", "tiny")
    with tracking.tracked_run(tracker):
        result = train(TINY, cfg, data, tracker=tracker, model_name="resnet8")
    run = store.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    cx = ResNet(TINY).complexity()
    expected = naming.run_params(TINY, cfg, DATA_CFG, model_name="resnet8", params=cx.params, macs=cx.macs)
    assert run.data.params == expected
    tags = run.data.tags
    assert {k: tags.get(k) for k in naming.axis_tags(TINY, cfg.seed)} == naming.axis_tags(TINY, cfg.seed)
    assert tags["model"] == "resnet8" and tags["diverged"] == "false"
    for key in CONTRACT_METRICS:
        history = store.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key
        assert [m.value for m in history] == pytest.approx([h[key] for h in result.history]), key
    responses = store.get_metric_history(run.info.run_id, "layer_response_std")
    assert sorted(m.step for m in responses) == list(range(len(result.responses)))
    files = {a.path for a in store.list_artifacts(run.info.run_id)}
    assert files == {"config.json", "complexity.json", "layer_responses.json", "model.pt"}
    local = Path(store.download_artifacts(run.info.run_id, ""))
    config = json.loads((local / "config.json").read_text())
    assert config["arch"] == TINY.as_dict() and config["train"]["epochs"] == 2 and config["data"]["val_size"] == 100
    assert config["precision"] == "fp32" and run.data.params["train.precision"] == "fp32"  # the papers'
    complexity = json.loads((local / "complexity.json").read_text())
    assert complexity["params"] == cx.params and complexity["rows"]
    assert json.loads((local / "layer_responses.json").read_text()) == result.responses
    state = torch.load(local / "model.pt", weights_only=True)
    ResNet(TINY).load_state_dict(state)  # strict


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


# -- the command line -----------------------------------------------------------------------------
TINY_RUN = ("--dataset", "synthetic", "--subset", "300", "--val-size", "50", "--epochs", "2",
            "--batch-size", "64", "--threads", "2")


@pytest.mark.slow
def test_ablate_train_end_to_end(results, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = ablate("train", "resnet8", *TINY_RUN, "--tracking-uri", uri)
    assert out.returncode == 0, out.stderr
    assert "finished: 2 epochs" in out.stdout and "mlflow ui --backend-store-uri" in out.stdout
    assert "#/experiments/" in out.stdout
    c = store_client(uri)
    exp = c.get_experiment_by_name("ablate-train")
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert f"#/experiments/{exp.experiment_id}/runs/{runs[0].info.run_id}" in out.stdout  # the run, one click
    assert runs[0].data.tags["model"] == "resnet8" and runs[0].data.params["data.name"] == "synthetic"
    assert list((results / "checkpoints").glob("resnet8-*/checkpoint.pt"))
    # The same command again finds the finished checkpoint: no second run.
    again = ablate("train", "resnet8", *TINY_RUN, "--tracking-uri", uri)
    assert again.returncode == 0 and "already finished" in again.stdout
    assert len(c.search_runs([exp.experiment_id])) == 1


@pytest.mark.parametrize("args,message", [
    (("resnet9", "--dataset", "synthetic"), "depth must be 6n+2"),
    (("resnet8", "--dataset", "no/such/folder"), "does not exist"),
    (("resnet8", "--dataset", "synthetic", "--epochs", "0"), "must be positive"),
    (("resnet8", "--dataset", "synthetic", "--epochs", "two"), "invalid int value"),
    (("resnet8", "--dataset", "synthetic", "--subset", "100", "--val-size", "200"), "must exceed"),
    (("resnet8", "--dataset", "synthetic", "--set", "train.bogus=1"), "unknown field"),
])
def test_ablate_train_bad_input_is_one_line_and_touches_no_store(results, tmp_path, args, message):
    db = tmp_path / "mlflow.db"
    out = ablate("train", *args, "--tracking-uri", f"sqlite:///{db}")
    assert_one_line_error(out, message)
    assert not db.exists()  # no experiment, no run: the store was never opened
