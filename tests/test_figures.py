"""`ablate figures` rebuilds the paper's figures and tables from an MLflow store alone.

The store is written here directly with MlflowClient, following the contract in
`runners.tracking.runs`: plain and residual nets at two depths with synthetic curves, a shortcut-B
variant (the Table 3 comparison), a diverged run, and runs that must be ignored (RUNNING,
FAILED, a `search` trial).
"""
import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from runners import cli

EXP = "figs-test"
EPOCHS = 8
SEEDS = {("none", 20): 6, ("A", 20): 6, ("B", 20): 3, ("none", 56): 4, ("A", 56): 4}
ROOT = Path(__file__).resolve().parents[1]


def _log_run(c, exp_id, *, shortcut, depth, seed, stage="confirm", status="FINISHED",
             diverged=False, rng):
    from mlflow.entities import Metric, Param
    tags = {"family": "cifar", "depth": str(depth), "block": "basic", "shortcut": shortcut,
            "preact": "false", "width": "1", "seed": str(seed), "model": f"{shortcut}{depth}",
            "ablation": EXP, "study": EXP, "stage": stage, "variant": f"d{depth}-{shortcut}"}
    if stage is None:  # a direct `ablate train` run: no study tags
        tags = {k: v for k, v in tags.items() if k not in ("ablation", "study", "stage", "variant")}
    run = c.create_run(exp_id, run_name=f"{shortcut}-{depth}-s{seed}", tags=tags)
    rid = run.info.run_id
    params = {**{k: v for k, v in tags.items() if k in ("family", "depth", "block", "shortcut", "preact",
                                                          "width", "seed", "model")},
              "data.name": "cifar10", "data.subset": "none", "train.iterations": "64000",
              "train.epochs": "none", "train.lr": "0.1", "train.batch_size": "128",
              "num_params": str(269722 if depth == 20 else 853018), "macs": str(40_600_000 * depth // 20)}
    c.log_batch(rid, params=[Param(k, v) for k, v in params.items()])
    # Plain nets get worse with depth (the degradation problem), residual nets better.
    floor = {"none": 0.06 + 0.002 * (depth - 20), "A": 0.05 - 0.0005 * (depth - 20), "B": 0.045}[shortcut]
    now = int(time.time() * 1000)
    metrics = []
    for e in range(1, EPOCHS + 1):
        train = floor + 0.8 * math.exp(-e / 2) + rng.normal(0, 0.004)
        test = train + 0.04 + rng.normal(0, 0.004)
        if diverged and e > EPOCHS // 2:
            train = test = float("nan")
        metrics += [Metric("train_error", train, now, e), Metric("test_error", test, now, e),
                    Metric("iteration", 391 * e, now, e)]
    n_layers = depth - 2
    base = 1.0 if shortcut == "none" else 0.5
    metrics += [Metric("layer_response_std", base + 0.3 * math.sin(i) + rng.normal(0, 0.02), now, i)
                for i in range(n_layers)]
    c.log_batch(rid, metrics=metrics)
    c.set_tag(rid, "diverged", "true" if diverged else "false")
    if status != "RUNNING":
        c.set_terminated(rid, status=status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient
    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp_id = c.create_experiment(EXP, artifact_location=(tmp / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    for (shortcut, depth), n in SEEDS.items():
        for seed in range(n):
            _log_run(c, exp_id, shortcut=shortcut, depth=depth, seed=seed, rng=rng)
    _log_run(c, exp_id, shortcut="none", depth=56, seed=4, diverged=True, rng=rng)
    # Never drawn: still running, failed, and a search trial (tuned on val with a short budget).
    _log_run(c, exp_id, shortcut="A", depth=56, seed=7, status="RUNNING", rng=rng)
    _log_run(c, exp_id, shortcut="A", depth=56, seed=8, status="FAILED", rng=rng)
    _log_run(c, exp_id, shortcut="none", depth=20, seed=9, stage="search", rng=rng)
    return uri, c, exp_id


@pytest.fixture(scope="module")
def outputs(store, tmp_path_factory):
    uri = store[0]
    outs = []
    for i in range(2):
        out = tmp_path_factory.mktemp(f"figs{i}")
        assert cli.main(["figures", "--experiment", EXP, "--tracking-uri", uri, "--out", str(out)]) == 0
        outs.append(out)
    return outs


def _used_runs(c, exp_id):
    """The runs the figures must use, read independently: FINISHED, confirm/train stage."""
    runs = c.search_runs([exp_id], max_results=1000)
    return [r for r in runs if r.info.status == "FINISHED" and r.data.tags["stage"] in ("confirm", "train")]


def _final(c, run, key):
    hist = c.get_metric_history(run.info.run_id, key)
    return max(hist, key=lambda m: m.step).value


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


FILES = ["curves", "final_error_vs_depth", "layer_responses", "ablation"]
TABLES = ["variants", "plain_vs_residual", "degradation"]


def test_writes_every_figure_and_table(outputs, capsys):
    out = outputs[0]
    expected = [f"{f}.{ext}" for f in FILES for ext in ("pdf", "png")]
    expected += [f"{t}.{ext}" for t in TABLES for ext in ("csv", "md", "tex")] + ["summary.md"]
    for name in expected:
        assert (out / name).stat().st_size > 0, name
    summary = (out / "summary.md").read_text()
    assert "1 run(s) with status RUNNING" in summary and "1 run(s) with status FAILED" in summary
    assert "1 run(s) with stage search" in summary and "1 diverged" in summary


def test_variant_table_matches_mlflow(store, outputs):
    _, c, exp_id = store
    groups = {}
    for r in _used_runs(c, exp_id):
        key = (r.data.tags["shortcut"], r.data.tags["depth"])
        groups.setdefault(key, []).append(r)
    rows = {(r["shortcut"], r["depth"]): r for r in _csv(outputs[0] / "variants.csv")}
    assert set(rows) == set(groups)  # the RUNNING/FAILED/search runs add no variant or seed
    for key, runs in groups.items():
        row = rows[key]
        ok = [r for r in runs if r.data.tags["diverged"] != "true"]
        assert int(row["seeds"]) == len(runs)
        assert int(row["diverged"]) == len(runs) - len(ok)
        assert int(row["n"]) == len(ok)
        for m in ("train", "test"):
            vals = np.array([100 * _final(c, r, f"{m}_error") for r in ok])
            assert float(row[f"{m}_error_mean_pct"]) == pytest.approx(vals.mean(), abs=1e-6)
            assert float(row[f"{m}_error_std_pct"]) == pytest.approx(vals.std(ddof=1), abs=1e-6)
        assert row["num_params"] == runs[0].data.params["num_params"]
    assert rows[("none", "56")]["diverged"] == "1"
    # Paper recipe + option A: He 2016a Table 6 stands beside ours; never beside plain nets.
    assert rows[("A", "20")]["paper_test_pct"] == "8.75" and rows[("A", "56")]["paper_test_pct"] == "6.97"
    assert rows[("none", "20")]["paper_test_pct"] == ""


def test_paired_test_matches_scipy(store, outputs):
    _, c, exp_id = store
    runs = [r for r in _used_runs(c, exp_id) if r.data.tags["diverged"] != "true"]
    rows = {r["depth"]: r for r in _csv(outputs[0] / "plain_vs_residual.csv") if r["residual"] == "ResNet (A)"}
    for depth, wilcoxon in (("20", True), ("56", False)):
        by = {sc: {r.data.tags["seed"]: 100 * _final(c, r, "test_error") for r in runs
                   if r.data.tags["depth"] == depth and r.data.tags["shortcut"] == sc} for sc in ("none", "A")}
        seeds = sorted(set(by["none"]) & set(by["A"]))
        plain, res = [by["none"][s] for s in seeds], [by["A"][s] for s in seeds]
        row = rows[depth]
        assert int(row["pairs"]) == len(seeds)
        assert float(row["test_diff_pct"]) == pytest.approx(np.mean(np.subtract(plain, res)), abs=1e-6)
        ref = stats.ttest_rel(plain, res)
        assert float(row["test_p_ttest"]) == pytest.approx(ref.pvalue, rel=1e-5)
        ci = ref.confidence_interval(0.95)
        assert float(row["test_ci_lo_pct"]) == pytest.approx(ci.low, abs=1e-6)
        if wilcoxon:
            assert row["test_used"] == "paired t + Wilcoxon"
            assert float(row["test_p_wilcoxon"]) == pytest.approx(stats.wilcoxon(plain, res).pvalue, rel=1e-5)
        else:
            assert row["test_used"] == "paired t" and row["test_p_wilcoxon"] == "n/a"


def test_degradation_is_welch_on_training_error(store, outputs):
    _, c, exp_id = store
    runs = [r for r in _used_runs(c, exp_id) if r.data.tags["diverged"] != "true"]
    rows = {r["net"]: r for r in _csv(outputs[0] / "degradation.csv")}
    for sc, net in (("none", "plain"), ("A", "ResNet (A)")):
        deep, shallow = ([100 * _final(c, r, "train_error") for r in runs
                          if r.data.tags["shortcut"] == sc and r.data.tags["depth"] == d] for d in ("56", "20"))
        ref = stats.ttest_ind(deep, shallow, equal_var=False)
        assert rows[net]["test_used"] == "Welch t"
        assert float(rows[net]["train_change_pct"]) == pytest.approx(np.mean(deep) - np.mean(shallow), abs=1e-6)
        assert float(rows[net]["train_p"]) == pytest.approx(ref.pvalue, rel=1e-5)
    assert float(rows["plain"]["train_change_pct"]) > 0 > float(rows["ResNet (A)"]["train_change_pct"])


def test_pdfs_embed_truetype_not_type3(outputs):
    for f in FILES:
        pdf = (outputs[0] / f"{f}.pdf").read_bytes()
        assert b"/Type3" not in pdf and b"/FontFile2" in pdf, f


def test_outputs_are_byte_stable(outputs):
    a, b = outputs
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_spec_file_names_the_experiment(store, tmp_path, capsys):
    spec = tmp_path / "study.yaml"
    spec.write_text(f"name: {EXP}\ndataset: {{name: /data/long/gone}}\nmodel: {{depth: [20, 32], shortcut: [none, A]}}\n")
    assert cli.main(["figures", str(spec), "--tracking-uri", store[0], "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "o" / "curves.pdf") in printed and "MLflow comparison: http://127.0.0.1:5000/#/experiments/" in printed


def test_only_supported_figures_are_drawn(tmp_path, capsys):
    """A partial study with residual nets at one depth: no plain-vs-residual, no depth figure.
    Also: a run without a stage tag (plain `ablate train`) counts, and the curves can be drawn
    against iterations with a min..max band."""
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'partial.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp_id = c.create_experiment("partial", artifact_location=(tmp_path / "a").as_uri())
    rng = np.random.default_rng(1)
    _log_run(c, exp_id, shortcut="A", depth=20, seed=0, rng=rng)
    _log_run(c, exp_id, shortcut="A", depth=20, seed=1, stage=None, rng=rng)
    _log_run(c, exp_id, shortcut="none", depth=20, seed=0, status="RUNNING", rng=rng)
    out = tmp_path / "out"
    assert cli.main(["figures", "--experiment", "partial", "--tracking-uri", uri, "--out", str(out),
                     "--x", "iteration", "--band", "minmax"]) == 0
    printed = capsys.readouterr().out
    assert (out / "curves.png").exists() and (out / "variants.csv").exists()
    assert not (out / "final_error_vs_depth.pdf").exists() and not (out / "plain_vs_residual.csv").exists()
    assert "skipped: final error vs depth" in printed and "skipped: table plain_vs_residual" in printed
    assert _csv(out / "variants.csv")[0]["seeds"] == "2"


def _ablate(*args, env=None):
    return subprocess.run([sys.executable, "-m", "runners.cli", "figures", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("case", ["unknown experiment", "unreachable store", "missing spec", "garbled spec"])
def test_bad_input_is_one_line_exit_2(store, tmp_path, case):
    uri = store[0]
    if case == "unknown experiment":
        p = _ablate("--experiment", "nope", "--tracking-uri", uri)
        assert "nope" in p.stderr and EXP in p.stderr  # lists the experiments that exist
    elif case == "unreachable store":
        p = _ablate("--experiment", EXP, "--tracking-uri", "http://127.0.0.1:9",
                    env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    elif case == "missing spec":
        p = _ablate(str(tmp_path / "absent.yaml"), "--tracking-uri", uri)
    else:
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: [unclosed\n  - :")
        p = _ablate(str(bad), "--tracking-uri", uri)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("ablate figures: error:")
