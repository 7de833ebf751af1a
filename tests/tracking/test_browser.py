"""The printed MLflow link, opened in a real (headless) browser, shows the comparison.

Takes the session's small study (conftest.smoke_study: the smoke spec, synthetic data), serves
`mlflow ui` on a copy of its store, opens the link `ablate run` printed in headless Chromium, and
reads the rendered page: every variant's runs are listed, grouped, under the train/test error
charts; the same view as a table shows each run's final test_error. Needs Debian's `chromium`:
skipped without it, except in CI (CI=true), where a missing browser is a failure.
"""
import os
import re

import pytest
from mlflow.tracking import MlflowClient

from conftest import recorded_run
from runners.tracking import view
from runners.tracking.browser import charts_loaded, find_chromium, serve_ui, settled_dom

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium():
    if find_chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no Chromium on PATH: .ci/run installs Debian's `chromium`")
        pytest.skip("no Chromium on PATH (apt-get install -y chromium) to open the MLflow UI in")


@pytest.mark.timeout(400)
@pytest.mark.slow
def test_printed_link_opens_the_grouped_comparison(chromium, smoke_study, smoke_results):
    results = smoke_results  # a copy of the session's smoke study; `mlflow ui` serves the copy
    out = recorded_run(smoke_study)
    assert out.returncode == 0, out.stderr
    [link] = re.findall(r"http://127\.0\.0\.1:5000/\S+", out.stdout)
    uri = f"sqlite:///{results / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("smoke")
    runs = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("stage") == "confirm"]
    assert len(runs) == 4
    with serve_ui(uri) as base:
        link = link.replace("http://127.0.0.1:5000", base)
        charts, _ = settled_dom(link, charts_loaded)
        table, _ = settled_dom(link.replace("compareRunsMode=CHART", "compareRunsMode=TABLE"),
                               lambda dom: all(r.info.run_name in dom for r in runs))
    assert charts_loaded(charts)
    assert "shared view" in charts  # the UI applied the stored view state, not its defaults
    assert "Group: none" in charts and "Group: A" in charts  # grouped by the varying axis
    for name in ("train_error", "test_error"):
        assert name in charts
    # The paper's charts open the chart section (the page renders charts lazily: look at the first ones).
    section = charts[charts.index("Plain vs residual (mean over seeds)"):]
    shown = sorted((section.index(m), m) for m in view.CHART_METRICS if m in section)
    assert [m for _, m in shown[:2]] == ["train_error", "test_error"], shown
    for run in runs:
        assert run.info.run_name in charts and run.info.run_name in table
        assert repr(run.data.metrics["test_error"]) in table, (run.info.run_name, run.data.metrics)
