"""`ablate doctor --device cpu --quick`: runs in CI with torch alone (Optuna, MLflow and tqdm
hidden), exits 0, and writes a JSON report whose checks say what they skipped and why; and the
bench it builds on, as a command."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, ablate, assert_one_line_error

SECTIONS = ["environment", "data", "cuda path", "agreement", "throughput", "several nets"]
# Any import of these fails in the subprocess: the doctor's path must not need them.
HIDE = "import sys; sys.modules.update(optuna=None, mlflow=None, tqdm=None); "


@pytest.mark.timeout(200)
@pytest.mark.slow
def test_quick_cpu_doctor_runs_with_torch_alone_and_reports_json(results, tmp_path):
    out_file = tmp_path / "doctor.json"
    code = HIDE + ("from runners.cli import main; "
                   f"sys.exit(main(['doctor', '--device', 'cpu', '--quick', '--json', {str(out_file)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out_file.read_text())
    assert report["ok"] and report["device"] == "cpu" and report["quick"] is True
    assert set(report) >= {"seconds", "counts", "recommendation", "checks"}
    checks = {(c["section"], c["name"]): c for c in report["checks"]}
    assert [s for s in SECTIONS if any(c["section"] == s for c in report["checks"])] == SECTIONS
    for c in report["checks"]:
        assert c["status"] in ("ok", "skip", "info"), c
        assert c["value"], c  # every row says something, skips say why
    for module in ("optuna", "mlflow"):
        assert checks[("environment", module)]["status"] == "skip"
        assert "absent" in checks[("environment", module)]["value"]
    assert checks[("environment", "CUDA")]["status"] == "skip"
    assert "--quick" in checks[("cuda path", "compile")]["value"]
    assert checks[("cuda path", "resume across device types")]["status"] == "skip"
    assert checks[("several nets", "nets at once")]["status"] == "skip"
    assert checks[("several nets", "packed")]["status"] == "skip"
    for name in ("train (autocast, channels_last)", "deterministic resume", "divergence detection"):
        assert checks[("cuda path", name)]["status"] == "ok", checks[("cuda path", name)]
    assert checks[("cuda path", "deterministic resume")]["value"] == "bit-exact"
    agreement = checks[("agreement", "fp32 vs tf32 and bf16")]
    assert set(agreement["details"]["tolerance"]) == {"train_loss", "test_error"}
    assert agreement["details"]["agree"] == ["bf16"] and "fp32 agrees with bf16" in agreement["value"]
    # both nets that decide the paper specs' precision, at 8 layers on a CPU, and a verdict per spec
    assert agreement["details"]["nets"] == {"identity": 8, "gated": 8}
    assert set(agreement["details"]["safe"]) == {"he2016a-*, he2016b-table2/3/4", "he2016b-table1's gates"}
    assert set(agreement["details"]["runs"]["gated"]) == {"fp32", "bf16"}
    assert "tf32: none here" in agreement["value"]
    bench = checks[("throughput", "bench: ours vs conventional")]["details"]
    assert bench["ratio"] > 0 and 0 < bench["utilization"]["ours"] and bench["matmul"]["flops_per_s"] > 0
    assert checks[("throughput", "resnet20 images/s")]["details"]["images_per_second"] > 0
    shares = checks[("throughput", "profile")]["details"]["shares"]
    assert abs(sum(shares.values()) - 1) < 1e-6 and "convolution" in shares
    assert "section" in out.stdout and "recommended" not in out.stderr


def test_doctor_bad_data_path_is_one_line(tmp_path):
    assert_one_line_error(ablate("doctor", "--data", tmp_path / "missing"), "--data", "not a folder")


def test_bench_reports_the_ratio_and_the_utilization(tmp_path):
    out = ablate("bench", "resnet8", "--dataset", "synthetic", "--steps", "1", "--repeats", "1",
                 "--warmup-steps", "0", "--batch-size", "32", "--utilization", "--json", tmp_path / "b.json")
    assert out.returncode == 0, out.stderr
    r = json.loads((tmp_path / "b.json").read_text())
    assert set(r["median"]) == {"ours", "conventional"} and len(r["rates"]["ours"]) == 1
    assert r["steps"] == 1 and r["workers"] == 0  # the CPU default: no loader workers
    assert r["utilization"]["ours"] == r["training_flops_per_s"]["ours"] / r["matmul"]["flops_per_s"]
    assert "ratio ours / conventional" in out.stdout and "of the matmul rate" in out.stdout


def test_doctor_starts_no_measurement_that_would_end_past_its_budget(monkeypatch):
    from runners.doctor import context
    clock = [0.0]
    monkeypatch.setattr(context.time, "perf_counter", lambda: clock[0])
    d = context.Doctor(context.Options(budget_s=100.0))

    def measurement(seconds):
        def fn():
            clock[0] += seconds
            return d.add("throughput", "m", "info", "x")
        return fn
    ran = [d.guarded("throughput", f"m{k}", measurement(30)).status for k in range(4)]
    # 0-30, 30-60, 60-90 s run; a fourth would end at 120 s: skipped, saying why.
    assert ran == ["info", "info", "info", "skip"]
    assert d.checks[-1].value == "time budget (100 s): 10 s left, a measurement has taken up to 30 s"
    assert d.guarded("data", "d", measurement(5), measurement=False).status == "info"  # not a measurement


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_doctor_only_packed_measures_packs_records_them_and_the_dry_run_reads_its_json(results, tmp_path,
                                                                                      monkeypatch):
    from runners.doctor import context, several_nets
    from runners.train import rates
    monkeypatch.setattr(several_nets, "PACKED_MODELS", (("resnet8", 16, 32),))  # the CPU's one model, tiny
    monkeypatch.setattr(context.Doctor, "steps", lambda self: 2)
    out_file = tmp_path / "doctor.json"
    out = ablate("doctor", "--device", "cpu", "--only", "packed", "--json", out_file)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out_file.read_text())
    assert [c["section"] for c in report["checks"]] == ["environment"] * sum(
        c["section"] == "environment" for c in report["checks"]) + ["data", "several nets"]
    packed = report["checks"][-1]
    assert packed["name"] == "packed" and packed["status"] == "info", packed
    (m,) = packed["details"]["measurements"]
    assert m["model_name"] == "resnet8 bn16" and m["model"]["bn_batch"] == 16 and m["batch_size"] == 32
    assert [row["k"] for row in m["packs"]] == [1, 2] and report["recommendation"]["pack"] == m["recommended"]
    assert [e["model_name"] for e in rates.load()] == ["resnet8 bn16"]  # recorded in results/rates.json
    assert [e["packs"] for e in rates.read(out_file)] == [e["packs"] for e in rates.load()]
    assert_one_line_error(ablate("doctor", "--only", "packed,speed"), "--only takes check groups from")
