"""`ablate run SPEC --dry-run`: the spec's runs sized and costed, nothing written; the estimates
the spec headers quote come from it."""
import re

from conftest import REPO

from runners.cli import main
from runners.study.estimate import estimate
from runners.study.spec import load_spec


def test_dry_run_prints_the_estimate_the_spec_header_quotes_and_writes_nothing(results, capsys):
    assert main(["run", str(REPO / "ablations" / "he2016a-fig6.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "he2016a-fig6: 45 runs, estimated 4.0 GPU-hours" in out
    assert " launch\n" in out  # these thin nets are bound by kernel launches, not by FLOPs
    header = (REPO / "ablations" / "he2016a-fig6.yaml").read_text()
    assert re.search(r"Estimated 4\.0 GPU-hours", header)
    assert not results.exists()


def test_imagenet_estimates_assume_imagenet_when_the_folder_is_absent_and_count_search_trials():
    spec = load_spec(REPO / "ablations" / "he2016a-imagenet-fig4.yaml", check_data=False)
    rows, source = estimate(spec)
    assert "1,281,167 assumed" in source
    assert round(sum(r.total_gpu_hours for r in rows)) == 35  # the header's "~35 GPU-hours per seed"
    assert all(r.bound == "compute" and r.iterations == 90 * ((1_281_167 - 10_000) // 256) for r in rows)
    smoke = load_spec(REPO / "ablations" / "smoke.yaml",
                      ["search={trials_per_variant: 3, space: {lr: {low: 0.01, high: 0.2}}}"])
    rows, _ = estimate(smoke)
    assert [r.runs for r in rows] == [2, 3, 2, 3]  # per variant: its seeds, then its search trials
