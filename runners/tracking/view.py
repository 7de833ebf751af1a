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
by variant (mean over seeds); bar charts of the final test and training error first, then the
train_error and test_error curves with a y range fitted to the data.

Colours and order. The UI colours a group by a hash of its id (`tag.<key>.<value>`, Fletcher-16
over the string, modulo its 29-colour palette; a colour picked by hand lives only in the
browser's localStorage), and lists groups in the order of their first run. So each confirmation
run carries two tags (`group_tags`): `view_group`, the variant's name padded with trailing spaces
(invisible on the page) until its hash lands on the colour wanted (plain nets in reds, residual
ones in blues, deeper nets darker), and `view_order`, which sorts the groups by depth, plain
beside residual. Runs logged before these tags existed get them when the view is published.
"""
from __future__ import annotations

import hashlib
import json
import re

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
GROUP_TAG, ORDER_TAG = "view_group", "view_order"
# MLflow's run palette (mlflow/server/js: RUNS_COLOR_PALETTE), in its order; group colours index it.
PALETTE = ("#a6630c", "#c83243", "#b45091", "#8a63bf", "#434a93", "#137dae", "#04867d", "#308613", "#facb66",
           "#1f272d", "#445461", "#5f7281", "#8396a5", "#93320b", "#be501e", "#de7921", "#f2be88", "#115026",
           "#277c43", "#3ba65e", "#8ddda8", "#9e102c", "#c82d4c", "#e65b77", "#f792a6", "#0e538b", "#2272b4",
           "#4299e0", "#8acaff")
# The palette's shade ramps, dark to light: one hue per kind of net (plain first, then residual).
RAMPS = ((21, 22, 23, 24), (25, 26, 27, 28), (17, 18, 19, 20), (13, 14, 15, 16), (9, 10, 11, 12))
BAR_METRICS = ("test_error", "train_error")  # the final value per group, first on the page
# The paper's figure first (He 2016a Fig. 6: training error dashed, test error solid), then the rest.
CHART_METRICS = ("train_error", "test_error", "val_error", "train_loss", "test_loss", "val_loss", "lr",
                 "images_per_second", "epoch_seconds", "iteration", "layer_response_std")
COLUMN_METRICS = ("train_error", "test_error", "val_error")
SECTION, SECTION_TITLE = "plain-vs-residual", "Plain vs residual (mean over seeds)"
BAR_SECTION, BAR_TITLE = "final-error", "Final error per variant (mean over seeds)"
FITTED = ("train_error", "test_error")  # curves whose y range is fitted to the data
# The parent run's per-variant metrics (`test_error/<variant>`, see study.publish) are drawn in
# sections named by their prefix. The UI loads a shown run's parent too (as "Additional runs"),
# so those sections are declared here, collapsed, below the comparison.
PARENT_SECTIONS = ("test_error", "train_error", "seeds")


def ui_group_colour(group_id: str) -> int:
    """The palette index the UI gives a group id (its getStableColorForRun: Fletcher-16)."""
    a = b = 0
    for ch in group_id:
        a = (a + ord(ch)) % 255
        b = (b + a) % 255
    return (a | b << 8) % len(PALETTE)


def _padded(name: str, colour: int) -> str:
    """`name` with the fewest trailing spaces whose group id the UI colours `colour`."""
    for pad in range(400):
        if ui_group_colour(f"tag.{GROUP_TAG}.{name}{' ' * pad}") == colour:
            return name + " " * pad
    return name  # unreachable for the palette's 29 colours; a wrong shade is harmless


def _kind(name: str) -> str:
    """A variant's name without its depth: 'ResNet-20 (A)' -> 'ResNet (A)'."""
    return re.sub(r"-\d+", "", name, count=1)


def group_tags(variants: list[tuple[str, int]]) -> dict[str, dict[str, str]]:
    """{variant name: its `view_group` and `view_order` tags} for a study's variants, given as
    (name, depth): one hue per kind of net (plain first), darker for deeper nets; ordered by
    depth, then kind, so each plain net sits beside its residual twin."""
    names = dict(variants)
    kinds = sorted({_kind(n) for n in names}, key=lambda k: (not k.startswith("plain"), k))
    order = sorted(names, key=lambda n: (names[n], kinds.index(_kind(n)), n))
    out = {}
    for name in names:
        ramp = RAMPS[kinds.index(_kind(name)) % len(RAMPS)]
        depths = sorted({d for n, d in names.items() if _kind(n) == _kind(name)}, reverse=True)
        shade = ramp[min(depths.index(names[name]), len(ramp) - 1)] if len(depths) > 1 else ramp[1]
        out[name] = {GROUP_TAG: _padded(name, shade), ORDER_TAG: f"{order.index(name):03d}"}
    return out


def _variant_of(run) -> tuple[str, int]:
    """A confirmation run's variant name and depth (its name is '<variant> s<seed>')."""
    name = run.info.run_name.rsplit(" s", 1)[0]
    return name, int(run.data.tags.get("depth") or 0)


def _confirmation_runs(c, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = c.search_runs([experiment_id], filter_string="tags.stage = 'confirm'", max_results=1000,
                             page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def tag_groups(c, runs) -> None:
    """Give every confirmation run the group tags its study's variants call for (runs logged
    before the tags existed, or whose study gained variants)."""
    wanted = group_tags(sorted(set(map(_variant_of, runs))))
    for run in runs:
        tags = wanted[_variant_of(run)[0]]
        if any(run.data.tags.get(k) != v for k, v in tags.items()):
            for k, v in tags.items():
                c.set_tag(run.info.run_id, k, v)


def fitted_ranges(c, runs, metrics=FITTED) -> dict[str, tuple[float, float]]:
    """{metric: (low, high)} holding every logged point of the FINISHED runs, with a margin."""
    out = {}
    finished = [r for r in runs if r.info.status == "FINISHED"]
    for m in metrics:
        values = [p.value for r in finished if m in r.data.metrics
                  for p in c.get_metric_history(r.info.run_id, m)]
        values = [v for v in values if v == v and abs(v) != float("inf")]
        if values:
            lo, hi = min(values), max(values)
            pad = 0.04 * (hi - lo or 1.0)
            out[m] = (round(max(lo - pad, 0.0), 4), round(hi + pad, 4))
    return out


def varying_axes(specs) -> list[str]:
    """The axes (seed excepted) on which a study's architectures differ, in the contract's order."""
    tags = [axis_tags(spec, 0) for spec in specs]
    return [a for a in AXES if a != "seed" and len({t[a] for t in tags}) > 1]


def observed_axes(runs) -> list[str]:
    """The same, read from an experiment's confirmation runs (when the spec is not at hand)."""
    values: dict[str, set] = {a: set() for a in AXES if a != "seed"}
    for run in runs:
        for a in values:
            values[a].add(run.data.tags.get(a))
    return [a for a in values if len(values[a]) > 1]


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's canonical column key (makeCanonicalSortKey)


def _line_chart(uuid: str, section: str, metric: str, y_range: tuple[float, float] | None = None) -> dict:
    # The fields of the UI's RunsChartsLineCardConfig, at its defaults, x = epoch (step).
    return {"type": "LINE", "uuid": uuid, "metricSectionId": section, "isGenerated": False, "deleted": False,
            "metricKey": metric, "displayName": metric, "selectedMetricKeys": [metric], "lineSmoothness": 0,
            "xAxisScaleType": "linear", "scaleType": "linear", "xAxisKey": "step", "selectedXAxisMetricKey": "",
            "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False, "runsCountToCompare": 100,
            "range": {"yMin": y_range[0], "yMax": y_range[1]} if y_range else {},
            "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True}


def _bar_chart(metric: str) -> dict:
    # The UI's RunsChartsBarCardConfig: one bar per group, its latest value averaged over the seeds.
    return {"type": "BAR", "uuid": f"ablate-bar-{metric}", "metricSectionId": BAR_SECTION, "isGenerated": False,
            "deleted": False, "metricKey": metric, "displayName": f"final {metric}", "runsCountToCompare": 100}


def comparison_view_state(axes: list[str], ranges: dict[str, tuple[float, float]] | None = None) -> dict:
    """The UI state of the comparison: filter, columns, grouping, charts (the UI's own schema).
    `axes` are the study's varying axes (shown first among the columns); `ranges` the fitted y
    ranges of the curves (`fitted_ranges`), none before any run finished."""
    ranges = ranges or {}
    charts = ([_bar_chart(m) for m in BAR_METRICS]
              + [_line_chart(f"ablate-{m}", SECTION, m, ranges.get(m)) for m in CHART_METRICS])
    shown_axes = [a for a in axes if a in AXES] + [a for a in AXES if a not in axes]
    return {
        # search facets: groups come in the order of their first run, so sort by the order tag
        "searchFilter": RUN_FILTER, "orderByKey": f"tags.`{ORDER_TAG}`", "orderByAsc": True,
        "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        # UI state
        "selectedColumns": ([_column("tags", a) for a in shown_axes]
                            + [_column("metrics", m) for m in COLUMN_METRICS]),
        "columnOrder": [], "columnWidths": {},
        "runsHiddenMode": "SHOW_ALL", "viewMaximized": False, "runListHidden": False,
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "tag", "groupByData": GROUP_TAG}]},
        "groupsExpanded": {}, "useGroupedValuesInCharts": True, "hideEmptyCharts": True,
        # A reordered section keeps our order; metrics we did not list are appended after it.
        "isAccordionReordered": True,
        # The bars two a row (the UI's default is three cards at 360 px); the curves one a row, so
        # that their legend ("<group> (train_error)" per group, two lines at most) lists every group.
        "compareRunSections": [{"uuid": BAR_SECTION, "name": BAR_TITLE, "display": True, "isReordered": True,
                                "deleted": False, "columns": 2, "cardHeight": 400},
                               {"uuid": SECTION, "name": SECTION_TITLE, "display": True, "isReordered": True,
                                "deleted": False, "columns": 1, "cardHeight": 440}]
        + [{"uuid": f"ablate-parent-{name}", "name": name, "display": False, "isReordered": True, "deleted": False}
           for name in PARENT_SECTIONS],
        "compareRunCharts": charts,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def publish_comparison_view(c, experiment_id: str, axes: list[str] | None = None, ui: str = DEFAULT_UI) -> str:
    """Store the comparison view on the experiment and return the full link that opens it.

    Idempotent: the same state gives the same key, so every worker and every rerun may call it;
    the key changes as finished runs widen the fitted y ranges (older links keep working).
    `axes` defaults to the axes the experiment's confirmation runs vary on. Confirmation runs
    without their group tags get them here.
    """
    runs = _confirmation_runs(c, experiment_id)
    tag_groups(c, runs)
    state = comparison_view_state(observed_axes(runs) if axes is None else axes,
                                  fitted_ranges(c, runs))
    value = json.dumps(state, separators=(",", ":"), sort_keys=True)
    key = hashlib.sha256(value.encode()).hexdigest()
    c.set_experiment_tag(experiment_id, SHARE_TAG_PREFIX + key, value)
    c.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    c.set_experiment_tag(experiment_id, VIEW_TAG, key)
    return view_link(experiment_id, key, ui)


def comparison_link(c, experiment_name: str, ui: str = DEFAULT_UI, refresh: bool = False) -> str | None:
    """The link of the experiment's comparison view (published now if it was never published,
    or with `refresh`, to fit it to the runs finished since); None when there is no such experiment."""
    exp = c.get_experiment_by_name(experiment_name)
    if exp is None:
        return None
    key = exp.tags.get(VIEW_TAG)
    if key and SHARE_TAG_PREFIX + key in exp.tags and not refresh:
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
