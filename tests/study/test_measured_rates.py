"""Measured GPU rates (runners/train/rates.py) in the dry run's estimate and in `resources.pack:
auto`: a measurement of the model itself (or its plain/option-A twin) gives "measured" GPU-hours,
one of another depth scales the assumed estimate, and anything unmeasured stays "assumed". The
measurements here are fabricated (no GPU in CI): what is tested is how they are read and used."""
import json

import pytest

from conftest import REPO, ablate, assert_one_line_error

from models.registry import resolve
from runners.train import rates

FIG6 = REPO / "ablations" / "he2016a-fig6.yaml"
H200 = "NVIDIA H200"
# ResNet-20 as fig6 trains it: BN over 64 images, batch 128, fp32, eager
R20 = resolve("resnet20").replace(bn_batch=64)


def measurement(arch=R20, device_name=H200, batch=128, packed: dict | None = None) -> dict:
    """A bench_packed result: separate 10,000 images/s alone, packed as given (K -> images/s)."""
    packed = packed or {1: 10_000.0, 2: 25_000.0, 4: 40_000.0}
    return {"device_name": device_name, "device": "cuda", "model": arch.as_dict(), "model_name": "resnet20 bn64",
            "batch_size": batch, "precision": "fp32", "compile": False, "torch": "2.x", "recommended": 4,
            "packs": [{"k": k, "packed": p, "separate": 10_000.0} for k, p in packed.items()]}


def test_a_measured_model_its_plain_twin_and_other_depths_take_their_rates_from_it(results, tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(measurement()))  # the form `ablate bench --pack --json` writes
    out = ablate("run", FIG6, "--dry-run", "--cpu-rate", "5", "--rates", path)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("cifar-")}
    hours = 64_000 * 128 / 10_000 / 3600  # every image of a run at the measured 10,000 images/s
    for twin in ("cifar-d20-basic-none-post-w1-bn64", "cifar-d20-basic-A-post-w1-bn64"):
        assert f"{hours:.2f}" in rows[twin] and f"measured on {H200} (resnet20 bn64)" in rows[twin]
    for deeper in ("cifar-d56-basic-A-post-w1-bn64", "cifar-d110-basic-A-post-w1-bn64+warmup=true"):
        assert f"scaled from resnet20 bn64 on {H200}" in rows[deeper]
    assert "rows from rates measured on NVIDIA H200" in out.stdout and not results.exists()


def test_packs_take_the_measured_rate_of_their_size_and_a_larger_one_is_not_assumed(results, tmp_path):
    path = tmp_path / "rates.json"
    rates.record([measurement()], path)  # results/rates.json's form
    out = ablate("run", FIG6, "--dry-run", "--json", "--pack", "4", "--cpu-rate", "5", "--rates", path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["measured_gpu"] == H200
    d20 = [p for p in doc["pack"]["packs"] if p["cells"][0].startswith("cifar-d20")]
    assert [p["size"] for p in d20] == [4, 4, 2]  # plain-20 and ResNet-20 pack together, 5 seeds each
    assert d20[0]["gpu_hours"] == pytest.approx(4 * 64_000 * 128 / 40_000 / 3600)
    assert d20[2]["gpu_hours"] == pytest.approx(2 * 64_000 * 128 / 25_000 / 3600)
    assert "measured on" in d20[0]["source"]
    wide = json.loads(ablate("run", FIG6, "--dry-run", "--json", "--pack", "8", "--cpu-rate", "5", "--rates",
                             path).stdout)
    first = wide["pack"]["packs"][0]  # 8 measured? no: the largest measured size up to 8, 4, is used
    assert first["size"] == 8 and first["gpu_hours"] == pytest.approx(8 * 64_000 * 128 / 40_000 / 3600)
    assert "largest measured up to 8" in first["source"]


def test_the_dry_run_reads_results_rates_json_and_says_so_when_there_is_none(results):
    out = ablate("run", FIG6, "--dry-run", "--cpu-rate", "5")
    assert "no GPU measurement recorded" in out.stdout and "measured on" not in out.stdout
    rates.record([measurement(), measurement(device_name="cpu (2 cores)")])  # a CPU's is left out
    out = ablate("run", FIG6, "--dry-run", "--cpu-rate", "5")
    assert out.returncode == 0, out.stderr
    assert f"measured on {H200}" in out.stdout and str(results / "rates.json") in out.stdout


def test_unreadable_rates_are_one_line_and_a_torn_record_is_set_aside(results, tmp_path):
    torn = tmp_path / "torn.json"
    torn.write_text('{"rates": [{"device_name"')
    assert_one_line_error(ablate("run", FIG6, "--dry-run", "--rates", torn), "cannot read measured rates from")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"something": 1}))
    assert_one_line_error(ablate("run", FIG6, "--dry-run", "--rates", other), "holds no measured pack rates")
    assert_one_line_error(ablate("run", FIG6, "--rates", other), "--rates needs --dry-run")
    results.mkdir()
    (results / "rates.json").write_text("{torn")
    rates.record([measurement()])
    assert (results / "rates.json.unreadable").read_text() == "{torn"
    assert [e["device_name"] for e in rates.load()] == [H200]


def test_a_doctor_json_is_read_as_rates(tmp_path):
    doc = {"checks": [{"section": "several nets", "name": "packed", "details": {"measurements": [measurement()]}},
                      {"section": "data", "name": "dataset", "details": {}}]}
    path = tmp_path / "doctor.json"
    path.write_text(json.dumps(doc))
    assert [e["model_name"] for e in rates.read(path)] == ["resnet20 bn64"]


def test_pack_auto_on_a_gpu_uses_a_recorded_measurement_else_measures_and_records(results, monkeypatch):
    import torch
    from runners.study import pack
    from runners.study.spec import load_spec
    from runners.train import bench
    spec = load_spec(FIG6, ["resources.pack=auto"], check_data=False)
    monkeypatch.setattr(pack, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(bench, "device_name", lambda device: H200)
    calls = []

    def fake_bench(arch, data, **kw):
        calls.append(kw)
        return {**measurement(arch, packed={1: 10_000.0, 2: 30_000.0}), "recommended": 2}

    monkeypatch.setattr(bench, "bench_packed", fake_bench)
    assert pack.pack_size(spec, "cuda", None) == 2 and len(calls) == 1  # measured now, and recorded
    assert pack.pack_size(spec, "cuda", None) == 2 and len(calls) == 1  # read back: not measured again
    other = load_spec(FIG6, ["resources.pack=auto", "train.precision=bf16"], check_data=False)
    assert pack.pack_size(other, "cuda", None) == 2 and len(calls) == 2  # another precision: measured
    assert calls[1]["precision"] == "bf16"


def test_a_dry_run_of_pack_auto_shows_the_recorded_k(results, tmp_path):
    path = tmp_path / "rates.json"
    rates.record([measurement()], path)  # recommends 4
    out = ablate("run", FIG6, "--dry-run", "--pack", "auto", "--cpu-rate", "5", "--rates", path)
    assert out.returncode == 0, out.stderr
    assert "packs of up to 4 (resources.pack auto" in out.stdout
    unmeasured = ablate("run", FIG6, "--dry-run", "--pack", "auto", "--cpu-rate", "5")
    assert "packs of up to 5 (resources.pack auto" in unmeasured.stdout  # the seeds of a variant
