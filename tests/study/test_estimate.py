"""`ablate run SPEC --dry-run`: the spec's runs sized and costed, nothing written; the estimates
the spec headers quote come from it."""
import re

import pytest

from conftest import REPO

from runners.cli import main
from runners.study.estimate import estimate
from runners.study.spec import load_spec


def test_dry_run_prints_the_estimate_the_spec_header_quotes_and_writes_nothing(results, capsys):
    assert main(["run", str(REPO / "ablations" / "he2016a-fig6.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "he2016a-fig6: 45 runs, estimated 4.0 GPU-hours" in out
    assert re.search(r" launch( +[0-9.]+)?\n", out)  # these thin nets are bound by kernel launches, not FLOPs
    header = (REPO / "ablations" / "he2016a-fig6.yaml").read_text()
    assert re.search(r"Estimated 4\.0 GPU-hours", header)
    assert not results.exists()


def test_imagenet_estimates_assume_imagenet_when_the_folder_is_absent_and_count_search_trials():
    spec = load_spec(REPO / "ablations" / "he2016a-imagenet-fig4.yaml", check_data=False)
    rows, source = estimate(spec)
    assert "1,281,167 assumed" in source
    assert round(sum(r.total_gpu_hours for r in rows)) == 46  # the header's "~46 GPU-hours per seed"
    assert all(r.bound == "compute" and r.iterations == 600_000 for r in rows)  # the paper's "up to 60e4"
    smoke = load_spec(REPO / "ablations" / "smoke.yaml",
                      ["search={trials_per_variant: 3, space: {lr: {low: 0.01, high: 0.2}}}"])
    rows, _ = estimate(smoke)
    assert [r.runs for r in rows] == [2, 3, 2, 3]  # per variant: its seeds, then its search trials


def test_dry_run_json_gives_every_variants_resolved_config_and_writes_nothing(results, tmp_path, monkeypatch,
                                                                             capsys):
    import json
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(REPO / "ablations" / "he2016a-fig6.yaml"), "--dry-run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # one JSON document, nothing else on stdout
    assert doc["study"] == "he2016a-fig6" and doc["runs"] == 45 and round(doc["gpu_hours"], 1) == 4.0
    variants = doc["variants"]
    assert sorted((v["arch"]["depth"], v["arch"]["shortcut"]) for v in variants) == sorted(
        [(d, s) for d in (20, 32, 44, 56) for s in ("none", "A")] + [(110, "A")])
    assert all(v["train"]["precision"] == "fp32" for v in variants)  # the papers' fp32, every paper spec
    assert all(v["runs"] == 5 and v["params"] > 0 and v["macs"] > 0 and v["estimate"] for v in variants)
    r110 = next(v for v in variants if v["arch"]["depth"] == 110)
    assert r110["train"]["warmup"] is True and r110["arch"]["bn_batch"] == 64
    assert r110["estimate"][0]["iterations"] == 64_000 and r110["estimate"][0]["bound"] == "launch"
    assert list(tmp_path.iterdir()) == [] and not results.exists()


def test_json_without_dry_run_is_refused(results):
    from conftest import ablate, assert_one_line_error
    assert_one_line_error(ablate("run", REPO / "ablations" / "he2016a-fig6.yaml", "--json"), "--json needs --dry-run")


# variant -> the number its row stands beside, per paper spec (None: the paper prints none)
PAPER_ROWS = {
    "he2016a-fig6.yaml": 5,  # the residual nets; the plain nets are only curves in Fig. 6
    "he2016a-fig6-1202.yaml": 2,
    "he2016b-table1.yaml": 16,  # all but the exclusive gates at b_g -8, -9, -10 (searched, not printed)
    "he2016b-table2.yaml": 10,
    "he2016b-table3.yaml": 8,
    "he2016b-table3-cifar100.yaml": 4,
    "he2016b-table4.yaml": 1,
}


@pytest.mark.slow
@pytest.mark.timeout(300)  # counting the MACs of ResNet-1001s takes a while on a busy CPU
@pytest.mark.parametrize("name", sorted(PAPER_ROWS))
def test_dry_run_json_of_every_paper_spec_is_fp32_with_the_papers_numbers_beside_its_rows(name, capsys):
    import json
    assert main(["run", str(REPO / "ablations" / name), "--dry-run", "--json"]) == 0
    variants = json.loads(capsys.readouterr().out)["variants"]
    assert all(v["train"]["precision"] == "fp32" for v in variants)
    assert sum(bool(v["paper"]) for v in variants) == PAPER_ROWS[name]
    for v in variants:
        if v["arch"]["shortcut"] == "none":
            assert not v["paper"]  # no paper has a number for a plain CIFAR net
        if v["arch"]["block"] == "bottleneck":
            assert v["arch"]["bottleneck_stride"] == "1x1"  # the authors' bottleneck, not v1.5
    if name == "he2016b-table4.yaml":
        [v] = variants
        assert v["paper"]["He 2016b"]["text"] == "4.62" and v["train"]["recipe"] == "resnet-1k-layers"
        assert v["arch"]["bn_batch"] == 32 and v["train"]["batch_size"] == 64
    if name == "he2016b-table1.yaml":
        gates = {v["arch"]["gate_bias"]: v["paper"].get("He 2016b", {}).get("text") for v in variants
                 if v["arch"]["shortcut"] == "gate"}
        assert gates == {0.0: "fail", -1.0: "fail", -2.0: "fail", -3.0: "fail", -4.0: "fail", -5.0: "fail",
                         -6.0: "8.70", -7.0: "9.81", -8.0: None, -9.0: None, -10.0: None}


def test_dry_run_on_a_cpu_gives_cpu_time_at_a_recorded_or_a_measured_rate(results, capsys):
    fig6 = str(REPO / "ablations" / "he2016a-fig6.yaml")
    assert main(["run", fig6, "--dry-run", "--cpu-rate", "2"]) == 0
    out = capsys.readouterr().out
    rows, _ = estimate(load_spec(fig6, check_data=False))
    hours = sum(r.runs * r.macs * r.images for r in rows) / 2e9 / 3600
    assert "CPU-h/run" in out and f"({hours:.2f} CPU-hours, one worker)" in out
    assert "at 2.00 forward GMAC/s, recorded (--cpu-rate)" in out
    assert main(["run", fig6, "--dry-run", "--device", "cpu", "--json"]) == 0
    import json
    doc = json.loads(capsys.readouterr().out)
    assert doc["cpu_rate_source"].startswith("measured now") and doc["cpu_rate_macs_per_s"] > 0
    assert doc["cpu_hours"] == pytest.approx(hours * 2e9 / doc["cpu_rate_macs_per_s"])
    assert not results.exists()


def test_sizes_come_from_the_golden_file_for_presets_up_to_size_neutral_fields():
    import models
    from models.registry import SIZE_NEUTRAL, measure, preset_size
    spec = models.resolve("resnet20", bn_batch=64, zero_init_last=True)
    assert preset_size(spec) == measure(spec)  # the golden file's, and what a count gives
    assert preset_size(models.resolve("resnet20", width=2)) is None  # not a preset: counted
    assert set(SIZE_NEUTRAL) <= {f for f in models.ArchSpec.__dataclass_fields__}
