"""Test helper: a sweep's trial runs in an MLflow store, found by their tags.

Tests check what trials logged by looking their runs up by tag; the product reads whole sweeps
instead (sweep.runs.read_sweep). Both use the schema's queries (trainables.mlflow_schema).
"""

from __future__ import annotations

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from trainables import mlflow_schema as schema
from trainables.mlflow_store import resolve_tracking_uri


def find_trial_runs(tracking_uri: str | None, experiment: str, **tag_filters: object) -> list[Run]:
    """Every non-deleted trial run of ``experiment`` whose tags equal ``tag_filters`` (values
    compared as strings), sorted by trial_key. The parent run is never included. An experiment
    that does not exist has no runs."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        return []
    clauses = [schema.tag_filter(key, value) for key, value in sorted(tag_filters.items())]
    runs = schema.search_all(client, [found.experiment_id], " AND ".join(clauses))
    trials = [run for run in runs if schema.TRIAL_KEY_TAG in run.data.tags]
    return sorted(trials, key=lambda run: run.data.tags[schema.TRIAL_KEY_TAG])
