"""One link into MLflow's UI that opens a study's comparison: plain vs residual, grouped, charted.

MLflow 3's UI has its own "share view" mechanism (mlflow/server/js: ExperimentGetShareLinkModal,
useSharedExperimentViewState): the page's search facets and UI state, serialized as one JSON
object, are stored as the experiment tag `mlflow.sharedViewState.<key>` (key: the SHA-256 of the
value), and `#/experiments/<id>/runs?viewStateShareKey=<key>` opens that state. The UI reads a
plain JSON value as well as its own deflate-compressed one, so we write plain JSON: readable with
`mlflow experiments get`, checkable in tests. The state keys are the UI's own
(`EXPERIMENT_PAGE_UI_STATE_FIELDS` and the search facets); unknown ones are dropped by the UI.

The view: confirmation runs only, FINISHED only (an interrupted attempt, closed KILLED, never
shows beside its retry); the axis tags and the final train/test errors as columns; runs grouped
by the study's varying axes (mean over seeds); the train_error and test_error charts first.
"""
from __future__ import annotations

import hashlib
import json

from ..errors import ConfigError
from ..paths import sqlite_path
from .links import DEFAULT_UI, view_link
from .naming import AXES, axis_tags
from .store import client

SHARE_TAG_PREFIX = "mlflow.sharedViewState."
# A pointer to the current comparison view, so `status` and `figures` print the same link.
VIEW_TAG = "ablate.comparison_view"
# MLflow 3 opens experiments in its GenAI layout unless the experiment says it trains models.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"

RUN_FILTER = "tags.stage = 'confirm' AND attributes.status = 'FINISHED'"
# The paper's figure first (He 2016a Fig. 6: training error dashed, test error solid), then the rest.
CHART_METRICS = ("train_error", "test_error", "val_error", "train_loss", "test_loss", "val_loss", "lr",
                 "images_per_second", "epoch_seconds", "iteration", "layer_response_std")
COLUMN_METRICS = ("train_error", "test_error", "val_error")
SECTION, SECTION_TITLE = "plain-vs-residual", "Plain vs residual (mean over seeds)"
# The parent run's per-variant metrics (`test_error/<variant>`, see study.publish) are drawn in
# sections named by their prefix. The UI loads a shown run's parent too (as "Additional runs"),
# so those sections are declared here, collapsed, below the comparison.
PARENT_SECTIONS = ("test_error", "train_error", "seeds")


def varying_axes(specs) -> list[str]:
    """The axes (seed excepted) on which a study's architectures differ, in the contract's order."""
    tags = [axis_tags(spec, 0) for spec in specs]
    return [a for a in AXES if a != "seed" and len({t[a] for t in tags}) > 1]


def observed_axes(c, experiment_id: str) -> list[str]:
    """The same, read from an experiment's confirmation runs (when the spec is not at hand)."""
    values: dict[str, set] = {a: set() for a in AXES if a != "seed"}
    token = None
    while True:
        page = c.search_runs([experiment_id], filter_string="tags.stage = 'confirm'", max_results=1000,
                             page_token=token)
        for run in page:
            for a in values:
                values[a].add(run.data.tags.get(a))
        token = page.token
        if not token:
            break
    return [a for a in values if len(values[a]) > 1]


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's canonical column key (makeCanonicalSortKey)


def _line_chart(uuid: str, section: str, metric: str) -> dict:
    # The fields of the UI's RunsChartsLineCardConfig, at its defaults, x = epoch (step).
    return {"type": "LINE", "uuid": uuid, "metricSectionId": section, "isGenerated": False, "deleted": False,
            "metricKey": metric, "displayName": metric, "selectedMetricKeys": [metric], "lineSmoothness": 0,
            "xAxisScaleType": "linear", "scaleType": "linear", "xAxisKey": "step", "selectedXAxisMetricKey": "",
            "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False,
            "range": {}, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True}


def comparison_view_state(axes: list[str]) -> dict:
    """The UI state of the comparison: filter, columns, grouping, charts (the UI's own schema)."""
    group = list(axes) or ["variant"]
    charts = [_line_chart(f"ablate-{m}", SECTION, m) for m in CHART_METRICS]
    return {
        # search facets
        "searchFilter": RUN_FILTER, "orderByKey": "attributes.start_time", "orderByAsc": False,
        "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        # UI state
        "selectedColumns": ([_column("tags", a) for a in AXES]
                            + [_column("metrics", m) for m in COLUMN_METRICS]),
        "columnOrder": [], "columnWidths": {},
        "runsHiddenMode": "SHOW_ALL", "viewMaximized": False, "runListHidden": False,
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "tag", "groupByData": a} for a in group]},
        "groupsExpanded": {}, "useGroupedValuesInCharts": True, "hideEmptyCharts": True,
        # A reordered section keeps our order; metrics we did not list are appended after it.
        "isAccordionReordered": True,
        "compareRunSections": [{"uuid": SECTION, "name": SECTION_TITLE, "display": True, "isReordered": True,
                                "deleted": False}]
        + [{"uuid": f"ablate-parent-{name}", "name": name, "display": False, "isReordered": True, "deleted": False}
           for name in PARENT_SECTIONS],
        "compareRunCharts": charts,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def publish_comparison_view(c, experiment_id: str, axes: list[str] | None = None, ui: str = DEFAULT_UI) -> str:
    """Store the comparison view on the experiment and return the full link that opens it.

    Idempotent: the same state gives the same key, so every worker and every rerun may call it.
    `axes` defaults to the axes the experiment's confirmation runs vary on.
    """
    state = comparison_view_state(observed_axes(c, experiment_id) if axes is None else axes)
    value = json.dumps(state, separators=(",", ":"), sort_keys=True)
    key = hashlib.sha256(value.encode()).hexdigest()
    c.set_experiment_tag(experiment_id, SHARE_TAG_PREFIX + key, value)
    c.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    c.set_experiment_tag(experiment_id, VIEW_TAG, key)
    return view_link(experiment_id, key, ui)


def comparison_link(c, experiment_name: str, ui: str = DEFAULT_UI) -> str | None:
    """The link of the experiment's comparison view (published now if it was never published);
    None when there is no such experiment."""
    exp = c.get_experiment_by_name(experiment_name)
    if exp is None:
        return None
    key = exp.tags.get(VIEW_TAG)
    if key and SHARE_TAG_PREFIX + key in exp.tags:
        return view_link(exp.experiment_id, key, ui)
    return publish_comparison_view(c, exp.experiment_id, ui=ui)


def find_comparison_link(uri: str, experiment_name: str, ui: str = DEFAULT_UI) -> str | None:
    """`comparison_link` for a reader that must not create a store (`ablate status`): None when
    the store is missing or unreachable, or has no such experiment."""
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        return None
    try:
        return comparison_link(client(uri), experiment_name, ui)
    except ConfigError:
        return None
