"""Every shipped paper spec runs to the end at CPU scale: the same file, shrunk by `--set` only.

Depths shrink to the smallest of each unit (basic 8 = 6n+2, bottleneck 11 = 9n+2, single 5 =
3n+2), the data to a few hundred synthetic images, the recipe to a few iterations, one seed.
What is checked is that the spec's every variant trains and is recorded, not any error rate.
"""
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, ablate

SMALL = {"basic": 8, "bottleneck": 11, "single": 5}
COMMON = ["--set", "dataset={name: synthetic, subset: 120, val_size: 0}", "--set", "seeds=[0]",
          "--set", "train.iterations=3", "--set", "train.batch_size=16", "--set", "train.probe=false"]
PAPER_SPECS = sorted(p.name for p in (REPO / "ablations").glob("*.yaml")
                     if p.name.startswith(("he2016", "ext-")) and "imagenet" not in p.name)


def shrink(path: Path) -> list[str]:
    """--set overrides that shrink every grid of `path` to its smallest depth."""
    raw = yaml.safe_load(path.read_text())
    grids = raw["model"] if isinstance(raw["model"], list) else [raw["model"]]
    prefix = (lambda i: f"model.{i}") if isinstance(raw["model"], list) else (lambda i: "model")
    out = []
    for i, grid in enumerate(grids):
        out += ["--set", f"{prefix(i)}.depth={SMALL[grid.get('block', 'basic')]}"]
        if "warmup_iterations" in (raw.get("train") or {}):
            out += ["--set", "train.warmup_iterations=1"]
    return out


def test_the_paper_specs_are_all_here():
    assert {"he2016a-fig6.yaml", "he2016a-fig6-1202.yaml", "he2016b-table1.yaml", "he2016b-table2.yaml",
            "he2016b-table3.yaml", "he2016b-table3-cifar100.yaml", "ext-shortcut-options.yaml",
            "ext-basic-vs-bottleneck.yaml"} <= set(PAPER_SPECS)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", PAPER_SPECS)
@pytest.mark.usefixtures("seeded_store")
def test_paper_spec_runs_to_the_end_at_cpu_scale(name, results, monkeypatch):
    """`ablate run` in this process (conftest.ablate). The parent run's figures and tables
    (runners.report.figures.write_all, ~8 s a study) are not drawn here: patched to draw none,
    as they are tested on their own (tests/report/test_figures.py, and on a real study in
    tests/tracking/test_mlflow_view.py::test_parent_run_carries_the_study_result)."""
    from runners.report import figures
    monkeypatch.setattr(figures, "write_all", lambda *a, **k: ([], [], []))
    path = REPO / "ablations" / name
    out = ablate("run", path, *COMMON, *shrink(path), "--device", "cpu")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    c = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    study = yaml.safe_load(path.read_text())["name"]
    exp = c.get_experiment_by_name(study)
    runs = c.search_runs([exp.experiment_id], "tags.stage = 'confirm'")
    variants = {r.data.tags["variant"] for r in runs}
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    assert len(variants) == len(runs)  # one seed: one run per variant, no two variants merged


def test_every_paper_bottleneck_strides_in_its_first_1x1():
    """The authors' bottleneck (He 2016a's Caffe nets, KaimingHe/resnet-1k-layers), not v1.5."""
    from runners.study.spec import parse_spec
    specs = PAPER_SPECS + ["he2016a-imagenet-table3.yaml"]
    bottlenecks = [v.arch for name in specs for v in parse_spec(
        yaml.safe_load((REPO / "ablations" / name).read_text()), name, check_data=False).variants
                   if v.arch.block == "bottleneck"]
    assert len(bottlenecks) >= 10 and {a.bottleneck_stride for a in bottlenecks} == {"1x1"}


@pytest.mark.usefixtures("results")
def test_imagenet_table3_dry_run_shows_the_papers_net_recipe_testing_and_numbers():
    """`ablate run ablations/he2016a-imagenet-table3.yaml --dry-run --json`: the paper's bottleneck,
    BN over 32 images, 10-crop and multi-scale testing, its schedule, and Tables 3-4 beside each net."""
    import json
    out = ablate("run", REPO / "ablations" / "he2016a-imagenet-table3.yaml", "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["data"]["ten_crop"] is True and doc["data"]["multi_scale"] == [224, 256, 384, 480, 640]
    variants = {(v["arch"]["depth"], v["arch"]["shortcut"]): v for v in doc["variants"]}
    for v in variants.values():
        assert v["arch"]["bn_batch"] == 32
        assert (v["train"]["schedule"], v["train"]["iterations"], v["train"]["epochs"]) == ("plateau", 600_000, None)
        assert v["train"]["precision"] == "fp32"
    fifty = variants[(50, "B")]
    assert fifty["arch"]["bottleneck_stride"] == "1x1" and fifty["macs"] == 3_857_973_248
    expected = {(34, "A"): (25.03, 7.76, None), (34, "B"): (24.52, 7.46, (21.84, 5.71)),
                (34, "C"): (24.19, 7.40, (21.53, 5.60)), (50, "B"): (22.85, 6.71, (20.74, 5.25)),
                (101, "B"): (21.75, 6.05, (19.87, 4.60)), (152, "B"): (21.43, 5.71, (19.38, 4.49))}
    assert set(variants) == set(expected)
    for key, (top1, top5, multi) in expected.items():
        numbers = variants[key]["paper"]["He 2016a"]
        assert (numbers["10-crop"]["top1"], numbers["10-crop"]["top5"]) == (top1, top5)
        got = numbers.get("multi-scale")
        assert (got and (got["top1"], got["top5"])) == (multi or None)
