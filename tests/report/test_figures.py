"""`ablate figures` rebuilds the paper's figures and tables from an MLflow store alone.

The store is written here directly with MlflowClient, following the contract in
`runners.tracking.naming`: plain and residual nets at two depths with synthetic curves, a shortcut-B
variant (the Table 3 comparison), a diverged run, and runs that must be ignored (RUNNING,
FAILED, a `search` trial).
"""
import csv
import math
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import ablate, once
from runners import cli

# Drawing the figures takes seconds a study (matplotlib's PDFs and PNGs): the tests that draw are
# in the slow tier, and the two drawings of the shared store (`store`) may take a while on a busy CPU.
pytestmark = pytest.mark.timeout(120)

EXP = "figs-test"
EPOCHS = 8
SEEDS = {("none", 20): 6, ("A", 20): 6, ("B", 20): 3, ("none", 56): 4, ("A", 56): 4}


def _log_run(c, exp_id, *, shortcut, depth, seed, stage="confirm", status="FINISHED",
             diverged=False, rng, axes=None, variant=None):
    """`axes`: further axis tags (logged as tags and unprefixed params, as `run_params` does)."""
    from mlflow.entities import Metric, Param
    tags = {"family": "cifar", "depth": str(depth), "block": "basic", "shortcut": shortcut,
            "preact": "false", "width": "1", "seed": str(seed), "model": f"{shortcut}{depth}",
            "ablation": EXP, "study": EXP, "stage": stage, "variant": variant or f"d{depth}-{shortcut}",
            **(axes or {})}
    if stage is None:  # a direct `ablate train` run: no study tags
        tags = {k: v for k, v in tags.items() if k not in ("ablation", "study", "stage", "variant")}
    run = c.create_run(exp_id, run_name=f"{shortcut}-{depth}-s{seed}", tags=tags)
    rid = run.info.run_id
    params = {**{k: v for k, v in tags.items() if k in ("family", "depth", "block", "shortcut", "preact",
                                                          "width", "seed", "model", *(axes or {}))},
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
                    Metric("train_loss", 3 * train, now, e), Metric("iteration", 391 * e, now, e)]
    n_layers = depth - 2
    base = 1.0 if shortcut == "none" else 0.5
    metrics += [Metric("layer_response_std", base + 0.3 * math.sin(i) + rng.normal(0, 0.02), now, i)
                for i in range(n_layers)]
    c.log_batch(rid, metrics=metrics)
    c.set_tag(rid, "diverged", "true" if diverged else "false")
    if status != "RUNNING":
        c.set_terminated(rid, status=status)
    return rid


@pytest.fixture(scope="session")
def store(tmp_path_factory, worker_id):
    """The figures' store (above), and `ablate figures` drawn from it twice (`outputs`): once per
    session, shared by the test workers (conftest.once)."""
    from mlflow.tracking import MlflowClient
    with once(tmp_path_factory, worker_id, "figures-store") as (tmp, build):
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        if build:
            _fill_store(MlflowClient(tracking_uri=uri), tmp)
            for i in range(2):
                out = tmp / f"figs{i}"
                assert cli.main(["figures", "--experiment", EXP, "--tracking-uri", uri, "--out", str(out)]) == 0
            (tmp / "done").touch()
    c = MlflowClient(tracking_uri=uri)
    return uri, c, c.get_experiment_by_name(EXP).experiment_id


def _fill_store(c, tmp):
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


@pytest.fixture(scope="session")
def outputs(store):
    folder = Path(store[0][len("sqlite:///"):]).parent
    return [folder / "figs0", folder / "figs1"]


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


FILES = ["curves", "curves_by_depth", "final_error_vs_depth", "training_loss", "layer_responses", "ablation"]
TABLES = ["variants", "plain_vs_residual", "degradation"]


@pytest.mark.slow
def test_writes_every_figure_and_table(outputs, capsys):
    out = outputs[0]
    expected = [f"{f}.{ext}" for f in FILES for ext in ("pdf", "png")]
    expected += [f"{t}.{ext}" for t in TABLES for ext in ("csv", "md", "tex")] + ["summary.md"]
    for name in expected:
        assert (out / name).stat().st_size > 0, name
    summary = (out / "summary.md").read_text()
    assert "1 run(s) with status RUNNING" in summary and "1 run(s) with status FAILED" in summary
    assert "1 run(s) with stage search" in summary and "1 diverged" in summary


@pytest.mark.slow
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
    assert rows[("A", "20")]["paper_2016a_pct"] == "8.75" and rows[("A", "56")]["paper_2016a_pct"] == "6.97"
    assert rows[("none", "20")]["paper_2016a_pct"] == ""


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_pdfs_embed_truetype_not_type3(outputs):
    for f in FILES:
        pdf = (outputs[0] / f"{f}.pdf").read_bytes()
        assert b"/Type3" not in pdf and b"/FontFile2" in pdf, f


@pytest.mark.slow
def test_outputs_are_byte_stable(outputs):
    a, b = outputs
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
def test_spec_file_names_the_experiment(store, tmp_path, capsys):
    spec = tmp_path / "study.yaml"
    spec.write_text(f"name: {EXP}\ndataset: {{name: /data/long/gone}}\n"
                    "model: {depth: [20, 32], shortcut: [none, A]}\n")
    assert cli.main(["figures", str(spec), "--tracking-uri", store[0], "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "o" / "curves.pdf") in printed
    assert "MLflow comparison: http://127.0.0.1:5000/#/experiments/" in printed


@pytest.mark.slow
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
    assert "skipped: ablation: no depth has two or more residual variants" in printed
    assert _csv(out / "variants.csv")[0]["seeds"] == "2"


def _ablate(*args, env=None):
    return ablate("figures", *args, env=env)


@pytest.mark.slow
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


@pytest.mark.slow
def test_tables_show_paper_numbers_failures_and_holm(store, outputs):
    out = outputs[0]
    md = (out / "variants.md").read_text()
    rows = {r["net"]: r for r in _md_rows(md)}
    paper_col = next(h for h in rows["ResNet-20 (A)"] if h.startswith("He 2016a"))
    assert "best of 5" in paper_col  # which statistic the paper's number is
    assert rows["ResNet-20 (A)"][paper_col] == "8.75" and rows["ResNet-56 (A)"][paper_col] == "6.97"
    assert rows["plain-20"][paper_col] == "" and rows["ResNet-20 (B)"][paper_col] == ""
    assert rows["plain-56"]["fail"] == "fail 1/5" and rows["plain-20"]["fail"] == "0/6"
    assert "BatchNorm statistics over 128" in md  # a recipe difference that remains, read from params
    csv_rows = _csv(out / "variants.csv")
    assert {r["fail"] for r in csv_rows if r["shortcut"] == "none" and r["depth"] == "56"} == {"fail 1/5"}
    for name in ("plain_vs_residual", "degradation"):
        rows = _csv(out / f"{name}.csv")
        for raw, adj in (("test_p_ttest", "test_p_ttest_holm"), ("train_p", "train_p_holm")):
            if raw not in rows[0]:
                continue
            p = np.array([float(r[raw]) for r in rows])
            order = np.argsort(p)
            m = len(p)
            # Holm by hand: (m - rank) * p in ascending order, made monotone, capped at 1
            want = np.empty(m)
            want[order] = np.minimum(1, np.maximum.accumulate((m - np.arange(m)) * p[order]))
            assert [float(r[adj]) for r in rows] == pytest.approx(want, rel=1e-5)
        assert "Holm" in (out / f"{name}.md").read_text()


def _md_rows(md):
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _study(curves_by_variant):
    """An in-process study: {(shortcut, depth): [train/test curves per seed]}; no store."""
    from runners.tracking.results import RunRecord, Study, VariantAxes
    by_variant = {}
    for (shortcut, depth), seeds in curves_by_variant.items():
        v = VariantAxes("cifar", depth, "basic", shortcut, False, "1")
        by_variant[v] = [RunRecord(f"{shortcut}{depth}s{i}", v, str(i), False,
                                   {"data.name": "cifar10", "train.batch_size": "128"},
                                   {"train_error": c, "test_error": {k: x + 0.01 for k, x in c.items()}},
                                   c[max(c)], c[max(c)] + 0.01) for i, c in enumerate(seeds)]
    return Study("inproc", "0", by_variant)


@pytest.mark.slow
def test_figures_have_integer_ticks_and_bands_within_range(tmp_path, monkeypatch):
    from runners.report import figures
    figs = {}
    save = figures.save_figure

    def keep(fig, out, stem):
        figs[stem] = fig
        return save(fig, out, stem)

    monkeypatch.setattr(figures, "save_figure", keep)
    # Two seeds far apart (a 95% t-interval would pass 0 and 100; the one at 99% is a fail by He
    # 2016b's 20% rule, still in the curves' mean) and three seeds near 0.
    wide = [{e: min(0.99, 0.5 + 0.45 * e / 7) for e in range(1, 8)}, {e: 0.05 for e in range(1, 8)}]
    low = [{e: 0.002 * s + 0.0005 * e for e in range(1, 8)} for s in range(3)]
    study = _study({("none", 20): wide, ("A", 20): low, ("none", 8): low, ("A", 8): wide})
    figures.write_all(study, tmp_path)
    assert {"curves", "curves_by_depth", "final_error_vs_depth"} <= set(figs)
    for stem in ("curves", "curves_by_depth"):
        for ax in figs[stem].axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), (stem, ticks)
            lo, hi = ax.get_ylim()
            assert 0 <= lo < hi <= 100
            for coll in ax.collections:  # the bands
                ys = np.concatenate([p.vertices[:, 1] for p in coll.get_paths()])
                assert ys.min() >= 0 and ys.max() <= 100, stem
        labels = [t.get_text() for t in figs[stem].legends[0].get_texts()]
        assert "training error" in labels and "test error" in labels  # line styles in the legend
        assert any("min..max" in t for t in labels)  # 2 seeds: a min..max band, labelled
    by_depth = figs["curves_by_depth"].axes
    assert [ax.get_title() for ax in by_depth] == ["8 layers", "20 layers"]  # plain and residual overlaid
    assert {t.get_text() for t in by_depth[0].get_legend().get_texts()} == {"plain (n=3)",
                                                                          "ResNet (A) (n=2, fail 1/2, min..max band)"}
    for ax in figs["final_error_vs_depth"].axes:
        lo, hi = ax.get_ylim()
        assert 0 <= lo < hi <= 100
        for line in ax.get_lines():
            ys = line.get_ydata()
            assert np.all((np.asarray(ys, float) >= 0) & (np.asarray(ys, float) <= 100))


def test_variants_keep_apart_by_every_axis_tag_and_variant_tag(tmp_path):
    """A new axis tag (here `order`) and a recipe override (the study's `variant` tag) each make a
    variant of their own; a run without a variant tag joins the one study variant with its axes."""
    from mlflow.tracking import MlflowClient

    from runners.tracking.results import load_study
    uri = f"sqlite:///{tmp_path / 'axes.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp_id = c.create_experiment("axes", artifact_location=(tmp_path / "a").as_uri())
    rng = np.random.default_rng(2)
    key = "cifar-d20-basic-A-post-w1"
    for seed in (0, 1):
        _log_run(c, exp_id, shortcut="A", depth=20, seed=seed, rng=rng, variant=key)
        _log_run(c, exp_id, shortcut="A", depth=20, seed=seed, rng=rng, variant=key + "+warmup=true")
        _log_run(c, exp_id, shortcut="A", depth=20, seed=seed, rng=rng, variant=key + "-order-b",
                 axes={"order": "b"})
    _log_run(c, exp_id, shortcut="A", depth=20, seed=2, stage=None, rng=rng, axes={"order": "b"})
    study = load_study(c, "axes")
    got = {(v.extra, v.detail): [r.seed for r in runs] for v, runs in study.by_variant.items()}
    assert got == {((), ""): ["0", "1"], ((), "+warmup=true"): ["0", "1"],
                   ((("order", "b"),), ""): ["0", "1", "2"]}
    assert not study.ignored  # nothing superseded: twins did not collide on (variant, seed)
    labels = sorted(v.label() for v in study.by_variant)
    assert labels == ["ResNet-20 (A)", "ResNet-20 (A) +warmup=true", "ResNet-20 (A) [order=b]"]


@pytest.mark.slow
def test_set_renames_the_study_and_ui_url_sets_the_link(store, tmp_path, capsys):
    spec = tmp_path / "study.yaml"
    spec.write_text("name: renamed\ndataset: {name: cifar10}\nmodel: {depth: 20, shortcut: [none, A]}\n")
    assert cli.main(["figures", str(spec), "--set", f"name={EXP}", "--tracking-uri", store[0],
                     "--ui-url", "http://lab:8080/", "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert f"MLflow comparison: http://lab:8080/#/experiments/{store[2]}/runs?viewStateShareKey=" in printed


def test_a_missing_store_is_one_line_and_is_not_created(tmp_path):
    db = tmp_path / "none" / "mlflow.db"
    out = ablate("figures", "--experiment", "x", "--tracking-uri", f"sqlite:///{db}")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "no MLflow store" in out.stderr
    assert not db.exists() and not db.parent.exists()


def test_fails_by_the_papers_rule_rank_worst_and_nothing_is_dropped_silently():
    """He 2016b's fail (test error above 20%, or diverged) counts as the worst of all N runs in the
    median and the best; the mean is over the converged runs; a killed run is named under the table."""
    from collections import Counter

    from runners.report import tables
    from runners.tracking.results import RunRecord, Study, VariantAxes

    def runs(v, finals):  # final test errors (fractions); None: diverged
        return [RunRecord(f"{v.shortcut}-{i}", v, str(i), f is None, {"data.name": "cifar10", "depth": "20"},
                          {"test_error": {1: math.nan if f is None else f}},
                          math.nan if f is None else f - 0.01, math.nan if f is None else f)
                for i, f in enumerate(finals)]
    res, plain = (VariantAxes("cifar", 20, "basic", s, False, "1") for s in ("A", "none"))
    study = Study("fails", "0", {plain: runs(plain, [0.08, 0.30, 0.35]),
                                 res: runs(res, [0.06, 0.065, 0.07, 0.25, None])},
                  ignored=Counter({"status KILLED": 1}), left_out={"status KILLED": ["A-20-s5"]})
    t = tables.variant_table(study)
    rows = {r[0]: dict(zip(t.headers, r)) for r in t.rows}
    a = rows["ResNet-20 (A)"]
    # the median of 5, ranked 6, 6.5, 7, fail (25%), fail (diverged); the mean over the 4 converged
    assert (a["fail"], a["median of N"], a["best of N"]) == ("fail 2/5", "7.00", "6.00")
    assert a["test err. (%, converged)"] == tables.pm(100 * np.mean([0.06, 0.065, 0.07, 0.25]),
                                                      100 * np.std([0.06, 0.065, 0.07, 0.25], ddof=1))
    p = rows["plain-20"]
    assert (p["fail"], p["median of N"], p["best of N"]) == ("fail 2/3", "fail", "8.00")  # lands on a fail
    csv_row = dict(zip(t.columns, t.csv_rows[[r[0] for r in t.rows].index("plain-20")]))
    assert (csv_row["fails"], csv_row["diverged"], csv_row["n"], csv_row["test_error_median_pct"]) == \
        ("2", "0", "3", "fail")
    notes = " | ".join(t.notes)
    assert "left out: 1 run(s) with status KILLED (crashed, killed or still running: never finished): A-20-s5" \
        in notes
    assert "test error above 20% (CIFAR-10), or diverged" in notes and "CPU demo" in notes
    pvr = tables.plain_vs_residual_table(study)
    assert pvr.rows[0][pvr.headers.index("fail (plain, res.)")] == "fail 2/3, fail 2/5"
    assert any("A-20-s5" in n for n in pvr.notes)
    summary = tables.summary_markdown(study, [], [], [])
    assert "1 diverged" in summary and "3 more ended above 20% test error" in summary
    assert "not used: 1 run(s) with status KILLED: A-20-s5" in summary


def test_each_variant_is_paired_by_seed_with_the_original_unit_at_its_depth():
    """He 2016b Tables 1-3 compare every shortcut kind and activation order with the original unit
    (post-activation, identity shortcut) of the same depth: Δ = variant - original, by seed."""
    from runners.report import tables
    from runners.tracking.results import RunRecord, Study, VariantAxes

    def runs(v, params, finals):
        return [RunRecord(f"{v.shortcut}-{i}", v, str(i), False, {"data.name": "cifar10", "depth": "110",
                                                                   "shortcut": v.shortcut, **params},
                          {"test_error": {1: f}}, f - 0.01, f) for i, f in enumerate(finals)]
    orig = VariantAxes("cifar", 110, "basic", "A", False, "1")
    gate = VariantAxes("cifar", 110, "basic", "gate", False, "1", (("gate_bias", "-6"),))
    pre = VariantAxes("cifar", 110, "basic", "A", True, "1")
    other_depth = VariantAxes("cifar", 56, "basic", "gate", False, "1")
    study = Study("t1", "0", {
        orig: runs(orig, {}, [0.060, 0.062, 0.064]),
        gate: runs(gate, {"arch.gate_bias": "-6"}, [0.080, 0.090, 0.085]),
        pre: runs(pre, {"preact": "true"}, [0.059, 0.060, 0.063]),
        other_depth: runs(other_depth, {}, [0.07, 0.07, 0.07])})
    t = tables.versus_original_table(study)
    rows = {r[1]: dict(zip(t.headers, r)) for r in t.rows}
    assert set(rows) == {"ResNet (gate) [gate_bias=-6] vs ResNet (A)", "pre-act ResNet (A) vs ResNet (A)"}
    g = rows["ResNet (gate) [gate_bias=-6] vs ResNet (A)"]
    diffs = [100 * (a - b) for a, b in zip([0.080, 0.090, 0.085], [0.060, 0.062, 0.064])]
    assert g["pairs (n)"] == "3" and g["Δ test (pp)"] == f"{np.mean(diffs):.2f}"
    assert float(g["p t / Holm"].split(" / ")[0]) == pytest.approx(
        stats.ttest_rel([8.0, 9.0, 8.5], [6.0, 6.2, 6.4]).pvalue, rel=1e-2)
    assert "variant − original unit" in t.notes[0]
    # a study without an original unit (plain vs residual only) has no such table
    assert not tables.versus_original_table(Study("x", "0", {other_depth: study.by_variant[other_depth]})).rows
