"""The printed MLflow link, opened in a real (headless) browser, shows the comparison.

Takes the session's small study (conftest.smoke_study: the smoke spec, synthetic data), serves
`mlflow ui` on a copy of its store, opens the link `ablate run` printed in headless Chromium, and
reads the rendered page: the bar charts of the final errors first, plain and residual groups in
different hues, every group in the curves' legend, every variant's runs listed, grouped; the same
view as a table shows each run's final test_error; a run's page opens in the model-training
layout, not the GenAI one. Needs Debian's `chromium`:
skipped without it, except in CI (CI=true), where a missing browser is a failure.
"""
import os
import re

import pytest
from mlflow.tracking import MlflowClient

from conftest import recorded_run
from runners.tracking import view
from runners.tracking.browser import (charts_loaded, find_chromium, genai_layout, run_page_loaded, serve_ui,
                                      settled_dom)
from runners.tracking.links import run_link

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
    groups = {r.info.run_name.rsplit(" s", 1)[0] for r in runs}
    [parent] = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("stage") == "study"]
    with serve_ui(uri) as base:
        link = link.replace("http://127.0.0.1:5000", base)
        charts, _ = settled_dom(link, charts_loaded)
        table, _ = settled_dom(link.replace("compareRunsMode=CHART", "compareRunsMode=TABLE"),
                               lambda dom: all(r.info.run_name in dom for r in runs))
        pages = [settled_dom(run_link(exp.experiment_id, r.info.run_id, base), run_page_loaded)[0]
                 for r in (runs[0], parent)]
    assert charts_loaded(charts)
    assert "shared view" in charts  # the UI applied the stored view state, not its defaults
    for group in groups:  # grouped by variant
        assert f"Group: {group}" in charts
    # The bar charts of the final errors open the page, then the paper's curves.
    bars, curves = charts.index(view.BAR_TITLE), charts.index(view.SECTION_TITLE)
    assert bars < curves and 'class="trace bars"' in charts[bars:curves]
    shown = sorted((charts[curves:].index(m), m) for m in view.CHART_METRICS if m in charts[curves:])
    assert [m for _, m in shown[:2]] == ["train_error", "test_error"], shown
    # Every group in the first curve's legend ("<group> (train_error)"; the page collapses the
    # group tag's padding spaces, as a browser draws them).
    legend = re.sub(r"\s+", " ", charts[curves:])
    for group in groups:
        assert f"{group} (train_error)" in legend, group
    # Plain and residual in different hues: the colours the group tags chose, drawn on the page.
    tags = view.group_tags([(g, 8) for g in groups])
    rgb = {}
    for group, t in tags.items():
        hex_ = view.PALETTE[view.ui_group_colour(f"tag.{view.GROUP_TAG}.{t[view.GROUP_TAG]}")]
        rgb[group] = tuple(int(hex_[i:i + 2], 16) for i in (1, 3, 5))
        assert "rgb({}, {}, {})".format(*rgb[group]) in charts[curves:], (group, hex_)
    assert rgb["plain-8"][0] > rgb["plain-8"][2] and rgb["ResNet-8 (A)"][2] > rgb["ResNet-8 (A)"][0]  # red, blue
    for run in runs:
        assert run.info.run_name in charts and run.info.run_name in table
        assert repr(run.data.metrics["test_error"]) in table, (run.info.run_name, run.data.metrics)
    for page in pages:  # a child's and the parent's page: the model-training layout
        assert run_page_loaded(page) and not genai_layout(page)
