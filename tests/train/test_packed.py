"""Packed training (runners/train/packed.py): K models trained as one step give each model what it
gets alone (seeds, a plain net with its option-A twin, warm-up, per-model recipe values, ghost BN),
a diverging model is frozen alone, a pruned one stops alone, and a pack resumes from its
checkpoints.

The tolerance. Packed and separate runs are not bit-identical: vmap turns K convolutions into one
grouped convolution, which adds in another order, so a loss differs by an ulp or so (~2e-7) at
the first step. SGD then amplifies any difference step by step, as it amplifies every rounding:
moving one run's initial weights by one ulp (`nudged`) moves its numbers after a few hundred
steps by as much as packing does. So the packed numbers must agree with the separate ones
* within 2e-5 after the first epoch (8 steps: rounding, not yet amplified), and
* within 10x the one-ulp nudge's own deviation (and 1e-4) over the whole run: the losses of
  every epoch, the final weights and BN statistics, the momentum buffers; an error within 3
  images of its split (a nearly tied image may flip either way, as it does under the nudge).
"""
import dataclasses
import json

import pytest
import torch

from models import ArchSpec, ConfigError
from runners.train.checkpoint import CHECKPOINT, load_checkpoint
from runners.train.config import DataConfig, TrainConfig
from runners.train.data import load_dataset
from runners.train.packed import Member, pack_key, train_packed
from runners.train import trainer
from runners.train.trainer import train

TINY = ArchSpec(depth=8, width=0.25)  # 3 stages of one basic block, 4-16 channels
PLAIN = TINY.replace(shortcut="none")  # exactly TINY's parameters
GHOST = TINY.replace(bn_batch=8)
DATA_CFG = DataConfig("synthetic", subset=288, val_size=32)  # 256 train: 8 steps of 32 per epoch
METRICS = ("train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error")
FLOOR = 10  # the allowed deviation, in units of the one-ulp nudge's


def recipe(**kw) -> TrainConfig:
    base = dict(epochs=20, batch_size=32, lr=0.02, deterministic=True, threads=1, probe=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data():
    return load_dataset(DATA_CFG)


def final_state(run_dir):
    return load_checkpoint(run_dir / CHECKPOINT)


def deviation(a_hist, b_hist, a_state, b_state) -> dict:
    """The largest difference of each metric over the epochs, and of the final weights and BN
    statistics (relative to each tensor's largest entry) and momentum buffers."""
    out = {k: max(abs(x[k] - y[k]) for x, y in zip(a_hist, b_hist)) for k in METRICS}
    out["weights"] = max(((a_state["model"][k].double() - b_state["model"][k].double()).abs().max()
                          / a_state["model"][k].double().abs().max().clamp(min=1e-12)).item() for k in a_state["model"])
    moments = zip(a_state["optimizer"]["state"].values(), b_state["optimizer"]["state"].values())
    out["momentum"] = max((a["momentum_buffer"] - b["momentum_buffer"]).abs().max().item() for a, b in moments)
    return out


@pytest.fixture(scope="module")
def floor(data, tmp_path_factory):
    """How far one ulp on the initial weights moves a run alone: SGD's own noise floor."""
    folder = tmp_path_factory.mktemp("floor")
    runs = {}
    for name, nudge in (("plain", False), ("nudged", True)):
        r = trainer.Run(TINY, recipe(), data, torch.device("cpu"), None, folder / name, None)
        if nudge:
            with torch.no_grad():
                for p in r.model.parameters():
                    p.copy_(torch.nextafter(p, p + 1))
        with trainer.runtime(r.cfg, r.device):
            runs[name] = r.run(None, False), final_state(folder / name)
    return deviation(runs["plain"][0].history, runs["nudged"][0].history, runs["plain"][1], runs["nudged"][1])


def assert_alike(alone_dir, packed_dir, alone, packed, floor, data):
    assert packed.status == alone.status and packed.epochs == alone.epochs
    assert [m["iteration"] for m in packed.history] == [m["iteration"] for m in alone.history]
    assert [m["lr"] for m in packed.history] == [m["lr"] for m in alone.history]  # warm-up ends alike
    if not alone.history:  # diverged in its first epoch
        return
    for k in METRICS:
        assert abs(packed.history[0][k] - alone.history[0][k]) <= 2e-5, k
    dev = deviation(alone.history, packed.history, final_state(alone_dir), final_state(packed_dir))
    images = {"train": alone.history[0]["iteration"] * 32, "val": DATA_CFG.val_size,
              "test": len(data.test)}
    for k, v in dev.items():
        split, _, kind = k.partition("_")
        limit = 3 / images[split] if kind == "error" else max(FLOOR * floor[k], 1e-4)
        assert v <= limit, (k, v, floor[k])


def compare(members, data, tmp_path, floor):
    alone = [train(m.arch, m.cfg, data, checkpoint_dir=tmp_path / f"alone{i}") for i, m in enumerate(members)]
    packed = train_packed([dataclasses.replace(m, checkpoint_dir=tmp_path / f"packed{i}")
                           for i, m in enumerate(members)], data)
    for i, (a, p) in enumerate(zip(alone, packed)):
        assert_alike(tmp_path / f"alone{i}", tmp_path / f"packed{i}", a, p, floor, data)
    return alone, packed


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_seeds_twins_warmup_and_recipes_pack_as_if_alone(data, tmp_path, floor):
    """Three models in one pack, 160 steps each: a ResNet with the paper's warm-up, the plain twin
    of another seed, and a ResNet with its own lr, momentum, Nesterov and weight decay."""
    members = [Member(TINY, recipe(seed=0, warmup=True, warmup_until_error=0.8)), Member(PLAIN, recipe(seed=1)),
               Member(TINY, recipe(seed=2, momentum=0.8, nesterov=True, weight_decay=5e-4))]
    alone, _ = compare(members, data, tmp_path, floor)
    warm = alone[0].history
    assert warm[0]["lr"] == 0.01 and 0.02 in [m["lr"] for m in warm[1:]]  # the warm-up did end, mid-run


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ghost_bn_packs_as_if_alone(data, tmp_path, floor):
    compare([Member(GHOST, recipe(seed=0, epochs=10)), Member(GHOST, recipe(seed=1, epochs=10))], data, tmp_path,
            floor)


@pytest.mark.slow
def test_plain_nets_alone_in_a_pack_stay_plain(data, tmp_path, floor):
    """A pack of plain nets only is run as the plain net itself (no identity term at all)."""
    compare([Member(PLAIN, recipe(seed=0, epochs=4)), Member(PLAIN, recipe(seed=1, epochs=4))], data, tmp_path,
            floor)


@pytest.mark.slow
def test_a_diverging_model_is_frozen_and_the_others_go_on(data, tmp_path, floor):
    members = [Member(TINY, recipe(seed=0, epochs=4)), Member(TINY, recipe(seed=1, epochs=4, lr=1e4)),
               Member(PLAIN, recipe(seed=2, epochs=4))]
    alone, packed = compare(members, data, tmp_path, floor)
    assert packed[1].status == "diverged" and packed[1].epochs <= 1
    assert [p.status for p in packed] == ["finished", "diverged", "finished"]
    saved, own = final_state(tmp_path / "packed1"), final_state(tmp_path / "alone1")
    # Frozen at its first non-finite check (every step on a CPU), within its first two epochs,
    # while the others went on for 4 epochs. How many steps an lr of 1e4 (train.lr's bound) takes
    # to overflow is itself a matter of rounding (BN makes the net scale-invariant until the
    # classifier overflows), so alone and packed may stop a few steps apart.
    assert saved["status"] == own["status"] == "diverged"
    assert saved["iteration"] < 16 and abs(saved["iteration"] - own["iteration"]) <= 4
    assert [final_state(tmp_path / f"packed{i}")["iteration"] for i in (0, 2)] == [32, 32]


@pytest.mark.slow
def test_a_pack_resumes_from_its_checkpoints_and_a_pruned_member_stops_alone(data, tmp_path):
    """Interrupted after epoch 2 (the Ctrl-C of a study), the pack resumes from each member's
    checkpoint to the same numbers as uninterrupted; a member whose on_epoch raises (pruned)
    ends there, with that exception, while the others go on."""
    cfgs = [recipe(seed=0, epochs=4), recipe(seed=1, epochs=4)]
    whole = train_packed([Member(TINY, c) for c in cfgs], data)

    def stop(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt

    members = [Member(TINY, c, checkpoint_dir=tmp_path / f"m{i}") for i, c in enumerate(cfgs)]
    with pytest.raises(KeyboardInterrupt):
        train_packed([members[0], dataclasses.replace(members[1], on_epoch=stop)], data)
    assert [final_state(tmp_path / f"m{i}")["epoch"] for i in range(2)] == [2, 2]
    resumed = train_packed(members, data)
    assert [r.history for r in resumed] == [r.history for r in whole] or all(
        abs(a[k] - b[k]) < 1e-6 for r, w in zip(resumed, whole) for a, b in zip(r.history, w.history) for k in METRICS)

    class Pruned(Exception):
        pass

    def prune(epoch, metrics):
        if epoch == 1:
            raise Pruned

    out = train_packed([Member(TINY, cfgs[0], on_epoch=prune), Member(TINY, cfgs[1])], data)
    assert isinstance(out[0], Pruned) and out[1].status == "finished" and out[1].epochs == 4


def test_only_same_shape_models_with_a_shared_recipe_pack(data):
    first = Member(TINY, recipe())
    assert pack_key(TINY, recipe(seed=1), DATA_CFG) == pack_key(PLAIN, recipe(seed=2, lr=0.5), DATA_CFG)
    assert pack_key(TINY.replace(shortcut="dropout"), recipe(), DATA_CFG) is None
    gated = TINY.replace(shortcut="gate")
    assert pack_key(gated, recipe(), DATA_CFG) is not None
    assert pack_key(gated, recipe(gate_bias_decay=False), DATA_CFG) is None  # the packed SGD decays every b_g
    for other, words in ((Member(TINY.replace(depth=14), recipe()), "parameters differ"),
                         (Member(TINY.replace(shortcut="B"), recipe()), "parameters differ"),
                         (Member(TINY, recipe(batch_size=64)), "train.batch_size"),
                         (Member(TINY.replace(shortcut="dropout"), recipe()), "cannot pack")):
        with pytest.raises(ConfigError, match=words):
            train_packed([first, other], data)


@pytest.mark.slow
def test_bench_pack_reports_packed_beside_separate_and_their_ratio_and_records_them(tmp_path, results):
    from conftest import ablate
    from runners.train import rates
    out_file = tmp_path / "pack.json"
    out = ablate("bench", "resnet8", "--dataset", "synthetic", "--pack", "1,2", "--steps", "1", "--repeats", "2",
                 "--warmup-steps", "1", "--batch-size", "32", "--json", out_file)
    assert out.returncode == 0, out.stderr
    r = json.loads(out_file.read_text())
    assert [row["k"] for row in r["packs"]] == [1, 2]
    for row in r["packs"]:
        assert len(row["packed_repeats"]) == len(row["separate_repeats"]) == 2
        assert row["ratio"] == pytest.approx(row["packed"] / row["separate"])
    assert r["recommended"] in (1, 2) and "recommended pack:" in out.stdout and "ratio" in out.stdout
    # recorded where the dry run and resources.pack auto read it; the JSON file reads the same
    recorded = rates.load()
    assert f"recorded in {results / 'rates.json'}" in out.stdout
    assert [e["packs"] for e in recorded] == [e["packs"] for e in rates.read(out_file)] == [
        [{k: row[k] for k in ("k", "packed", "separate")} for row in r["packs"]]]
    assert recorded[0]["device_name"].startswith("cpu") and recorded[0]["mode"] == "eager"
    again = ablate("bench", "resnet8", "--dataset", "synthetic", "--pack", "1", "--steps", "1", "--repeats", "1",
                   "--warmup-steps", "0", "--batch-size", "32")
    assert again.returncode == 0, again.stderr
    assert len(rates.load()) == 1 and [row["k"] for row in rates.load()[0]["packs"]] == [1]  # replaced


def test_the_recommended_pack_is_the_smallest_near_the_best_that_beats_separate_runs():
    from runners.train.bench import recommend

    def rows(*rates):
        return [{"k": k, "packed": p, "ratio_to_best_separate": p / s} for k, p, s in rates]

    assert recommend(rows((1, 100, 100), (2, 180, 100), (4, 300, 100), (8, 310, 100))) == 4
    assert recommend(rows((1, 100, 100), (2, 90, 100), (4, 80, 100))) == 1  # a CPU: packing is slower
    assert recommend(rows((1, 100, 100), (2, 102, 100))) == 1  # within 5%: not worth it
    # K processes at once beat the pack: packing is not recommended
    assert recommend(rows((1, 100, 100), (2, 180, 190), (4, 300, 310))) == 1
    assert recommend([{"k": 1, "out_of_memory": "CUDA out of memory"}]) == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ablate_train_pack_trains_seeds_into_their_own_runs_and_resumes(results):
    from conftest import ablate, assert_one_line_error
    from runners.tracking.store import client as store_client
    uri = f"sqlite:///{results}/mlflow.db"
    args = ["train", "resnet8", "--dataset", "synthetic", "--subset", "300", "--val-size", "44", "--epochs", "2",
            "--batch-size", "32", "--threads", "1", "--seed", "3", "--pack", "2", "--tracking-uri", uri]
    out = ablate(*args)
    assert out.returncode == 0, out.stderr
    assert "seed 3: finished, 2 epochs" in out.stdout and "seed 4: finished, 2 epochs" in out.stdout
    c = store_client(uri)
    runs = c.search_runs([c.get_experiment_by_name("ablate-train").experiment_id])
    assert sorted(r.data.tags["seed"] for r in runs) == ["3", "4"]
    assert {r.data.tags["pack"] for r in runs} == {"2"} and len({r.data.tags["pack_id"] for r in runs}) == 1
    assert all(r.info.status == "FINISHED" and len(c.get_metric_history(r.info.run_id, "test_error")) == 2
               for r in runs)
    again = ablate(*args)  # the checkpoints say finished: nothing trains again
    assert again.returncode == 0 and "seed 4: finished, 2 epochs" in again.stdout
    assert_one_line_error(ablate(*args, "--run-name", "x"), "--run-name does not combine with --pack")


def test_the_packed_step_of_ghost_bn_nets_has_no_per_member_fallback(data):
    """vmap warns ("There is a performance drop") where an op has no batching rule and it loops
    over the members; ghost BN's running-statistics update used lerp_, which has none."""
    import warnings
    from runners.train.packed import Stack, pack_net, packed_loss, stacked
    runs = [trainer.Run(GHOST, recipe(seed=s), data, torch.device("cpu"), None, None, None) for s in range(2)]
    net = pack_net(runs)
    net.train()
    stack = Stack(runs, net, packed_loss(net, runs[0].cfg))
    batches = [next(iter(r.batches(1))) for r in runs]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="There is a performance drop")
        stack.step(*stacked(batches), [0.02, 0.02])


def test_train_compile_compiles_the_packed_vmapped_loss_once_in_its_mode(data, monkeypatch):
    """train.compile reaches the packed step: its vmapped forward and loss are handed to
    torch.compile once per pack, in train.compile_mode (compiling for real takes ~40 s here)."""
    from runners.train import packed
    calls = []
    monkeypatch.setattr(packed.torch, "compile", lambda fn, mode: calls.append(mode) or fn)
    cfg = recipe(epochs=1, compile=True, compile_mode="reduce-overhead")
    out = train_packed([Member(TINY, dataclasses.replace(cfg, seed=s)) for s in range(2)], data)
    assert calls == ["reduce-overhead"] and all(r.status == "finished" for r in out)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bench_pack_processes_measures_k_processes_at_once_beside_the_pack(tmp_path, results):
    from conftest import ablate, assert_one_line_error
    out_file = tmp_path / "pack.json"
    out = ablate("bench", "resnet8", "--dataset", "synthetic", "--pack", "2", "--processes", "--steps", "1",
                 "--repeats", "1", "--warmup-steps", "0", "--batch-size", "16", "--json", out_file)
    assert out.returncode == 0, out.stderr
    r = json.loads(out_file.read_text())
    for row in r["packs"]:
        assert row["processes"] > 0 and len(row["processes_per_process"]) == row["k"]
        best = max(row["separate"], row["processes"])
        assert row["ratio_to_best_separate"] == pytest.approx(row["packed"] / best)
    assert "K processes images/s" in out.stdout
    assert_one_line_error(ablate("bench", "resnet8", "--processes"), "--processes needs --pack")
