"""Links into MLflow 3's UI, built in one place.

MLflow 3 opens an experiment in its GenAI layout ("Evaluation runs", judges, prompts) unless the
link asks for the model-training one, so every link carries `workflowType=machine_learning`.
"""
from __future__ import annotations

DEFAULT_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
WORKFLOW = "workflowType=machine_learning"
SHARE_URL_PARAM = "viewStateShareKey"


def experiment_link(experiment_id: str, ui: str = DEFAULT_UI) -> str:
    """The experiment's runs: the table, the charts and group-by."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{WORKFLOW}"


def run_link(experiment_id: str, run_id: str, ui: str = DEFAULT_UI) -> str:
    """One run's overview: its metrics, parameters and dataset."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW}"


def view_link(experiment_id: str, key: str, ui: str = DEFAULT_UI) -> str:
    """A stored shared view of the experiment (runners/tracking/view.py), opened on its charts."""
    return (f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{SHARE_URL_PARAM}={key}"
            f"&compareRunsMode=CHART&{WORKFLOW}")
