"""The MLflow store a sweep logs to: which store, its experiments, and the sweep's parent run.

The layout (docs/design.md, "MLflow"; names in trainables.mlflow_schema): an experiment per sweep,
one parent run per sweep (tag ``sweep_parent=true``) and one child run per trial. Everything here
talks to MLflow through ``MlflowClient`` with explicit run ids, never through
``mlflow.start_run``'s global active run, so several trials in one process never collide.

- **One tracking-URI rule** (`resolve_tracking_uri`), for the sweep, its trials, `sweep analyze`
  and `sweep ui`: the given URI, else ``MLFLOW_TRACKING_URI``, else ``mlflow.db`` in the current
  directory.
- **Experiments** are found or created by name (`get_or_create_experiment`), with artifacts
  beside a sqlite database, and tagged ``mlflow.experimentKind = custom_model_development``
  (MLflow 3's model-training kind; `mark_training_experiment` adds it to older sweeps) so the UI
  opens them on their training runs. Descriptions (``mlflow.note.content``) of experiments and
  runs are `set_experiment_note` and `set_run_note`.
- **The parent run** is started (found again when the sweep runs again) by `start_sweep_run`,
  given the plan, the spec and the package versions by `log_sweep_plan`, and ended by
  `end_sweep_run`.
- **Run-level helpers** the tracker's courier (trainables.journal) delivers with: params logged
  once (MLflow params are immutable), tags and metrics in MLflow's batch sizes, the latest run
  carrying a tag.

MLflow's own HTTP client retries a failed request up to 7 times with exponential backoff (about
four minutes) and waits 120 s for an answer; training would stall that long at every epoch of an
outage. The journal already retries, so for HTTP stores `use_short_http_retries` sets
``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` in the process
environment, unless they are already set (an explicit setting wins).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from mlflow.entities import Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_EXPERIMENT_TAG_VAL_LENGTH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from trainables import mlflow_schema as schema

__all__ = [
    "SHORT_HTTP_SETTINGS",
    "TERMINAL_STATUSES",
    "check_status",
    "chunks",
    "end_sweep_run",
    "flatten_config",
    "get_or_create_experiment",
    "latest_run",
    "limit_tag",
    "log_new_params",
    "log_sweep_plan",
    "log_tags",
    "mark_training_experiment",
    "package_versions",
    "param_values",
    "resolve_tracking_uri",
    "set_experiment_note",
    "set_run_note",
    "start_sweep_run",
    "use_short_http_retries",
]

logger = logging.getLogger(__name__)

TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow's HTTP client defaults (7 retries, 120 s timeout) would stall training during an outage;
# the journal is the retry mechanism, so one quick attempt per delivery is enough.
SHORT_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

# What versions.json of the parent run lists (those installed).
VERSIONED_PACKAGES = ("nvfp4-sweep", "torch", "ray", "mlflow", "albumentations", "optuna", "numpy")


# --------------------------------------------------------------------------- store and experiment


def resolve_tracking_uri(explicit: str | None) -> str:
    """The tracking URI to use: ``explicit`` (a spec's or a flag's value), else
    MLFLOW_TRACKING_URI, else a local sqlite file ``mlflow.db`` in the working directory.

    A relative sqlite path is made absolute here, against the current directory, because Ray
    runs each trial in its own working directory: ``sqlite:///mlflow.db`` would otherwise become
    one database per trial. (For a process that stays in one directory, such as `sweep analyze`
    or `sweep ui`, that names the same file.) A value that is not a URI is refused: MLflow 3.17
    has no file store.
    """
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri.strip():
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    uri = uri.strip()
    if "://" not in uri:
        raise ValueError(
            f"tracking_uri {uri!r} is not a URI; MLflow 3.17 rejects the file store. "
            "Use sqlite:///path/to/mlflow.db or http://host:port."
        )
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        path = Path(uri[len("sqlite:///") :])
        if not path.is_absolute():
            return f"sqlite:///{Path.cwd() / path}"
    return uri


def use_short_http_retries(tracking_uri: str) -> None:
    """One quick attempt per request to an HTTP store, for the rest of this process (see the
    module docstring); settings already in the environment win."""
    if tracking_uri.startswith(("http://", "https://")):
        for key, value in SHORT_HTTP_SETTINGS.items():
            os.environ.setdefault(key, value)


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if missing and restored if it was deleted (a deleted
    experiment keeps its name reserved, so creating it again would fail)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"experiment name must be a non-empty string, got {name!r}")
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            logger.warning("MLflow experiment %r was deleted; restoring it", name)
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(
            name,
            artifact_location=_artifact_location(client.tracking_uri, name),
            tags={schema.EXPERIMENT_KIND_TAG: schema.TRAINING_KIND},
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another trial created it meanwhile
            raise
        return client.get_experiment_by_name(name).experiment_id


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    # A sqlite store's default artifact root is ./mlruns of whatever directory the process is in
    # (a Ray trial's own directory); keep artifacts beside the database instead.
    if not tracking_uri.startswith("sqlite:///") or tracking_uri.endswith(":memory:"):
        return None
    root = Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts"
    return (root.resolve() / re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)).as_uri()


def mark_training_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment as a model-training one (``mlflow.experimentKind``) unless it already
    has a kind: a kind chosen by a user in the UI is kept."""
    experiment = client.get_experiment(experiment_id)
    if schema.EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment_id, schema.EXPERIMENT_KIND_TAG, schema.TRAINING_KIND)


def set_experiment_note(client: MlflowClient, experiment_id: str, text: str) -> None:
    """The experiment's description (Markdown), shown on its page in the UI."""
    limited = limit_tag(text, MAX_EXPERIMENT_TAG_VAL_LENGTH)
    client.set_experiment_tag(experiment_id, schema.NOTE_TAG, limited)


def set_run_note(client: MlflowClient, run_id: str, text: str) -> None:
    """A run's description (Markdown), shown on the run's page in the UI."""
    client.set_tag(run_id, schema.NOTE_TAG, limit_tag(text, MAX_TAG_VAL_LENGTH))


def limit_tag(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (MLflow refuses longer tag values), with a warning."""
    if len(text) <= limit:
        return text
    logger.warning("description of %d characters cut to MLflow's %d", len(text), limit)
    return text[: limit - 3] + "..."


# --------------------------------------------------------------------------- runs: params, tags


def flatten_config(config: Mapping[str, object], prefix: str = "") -> dict[str, str]:
    """Nested mappings to flat MLflow params: ``{"optim": {"lr": 1e-3}} -> {"optim.lr": "0.001"}``.

    Scalars become ``str(value)``; lists and tuples become JSON. Keys already flat stay as they
    are, so flattening twice changes nothing.
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = str(value)
    return flat


def param_values(params: Mapping[str, object]) -> dict[str, str]:
    """``params`` flattened, each value cut to MLflow's longest param (with a warning)."""
    flat = flatten_config(params)
    for key, value in flat.items():
        if len(value) > MAX_PARAM_VAL_LENGTH:
            logger.warning(
                "param %r is longer than MLflow's %d characters; truncated",
                key,
                MAX_PARAM_VAL_LENGTH,
            )
            flat[key] = value[: MAX_PARAM_VAL_LENGTH - 3] + "..."
    return flat


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Set ``tags`` on the run, in MLflow's batch size."""
    for chunk in chunks([RunTag(k, v) for k, v in tags.items()], MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=chunk)


def log_new_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """Log the params the run lacks. MLflow params are immutable: only the missing ones are sent,
    so a resumed trial never fails, and a changed value keeps its first value (warned about)."""
    existing = client.get_run(run_id).data.params
    changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
    if changed:
        logger.warning("run %s keeps its first value of changed params %s", run_id, changed)
    items = [Param(k, v) for k, v in params.items() if k not in existing]
    for chunk in chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=chunk)


def chunks(items: list, size: int) -> Iterable[list]:
    """``items`` in lists of at most ``size``: log_batch takes at most 1000 metrics and 100
    params or tags per call."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def latest_run(client: MlflowClient, experiment_id: str, tag: str, value: str) -> Run | None:
    """The most recently started active run of the experiment whose ``tag`` is ``value``."""
    runs = client.search_runs(
        [experiment_id],
        schema.tag_filter(tag, value),
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def check_status(status: str) -> None:
    """Refuse anything but a terminal run status."""
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"status must be one of {', '.join(TERMINAL_STATUSES)}; got {status!r}")


# --------------------------------------------------------------------------- the sweep's parent run


def start_sweep_run(
    tracking_uri: str | None,
    experiment: str,
    *,
    tags: Mapping[str, str],
    params: Mapping[str, object],
) -> str:
    """The sweep's parent run id: the existing one (tag ``sweep_parent=true``) when the sweep is
    run again, else a new run named after its ``sweep`` tag. Its status is set to RUNNING; params
    already logged keep their first value (a changed value is warned about, since MLflow params
    are immutable)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    experiment_id = get_or_create_experiment(client, experiment)
    mark_training_experiment(client, experiment_id)  # sweeps created before the tag existed
    run_tags = {str(k): str(v) for k, v in tags.items()} | {schema.PARENT_TAG: schema.PARENT_VALUE}
    found = latest_run(client, experiment_id, schema.PARENT_TAG, schema.PARENT_VALUE)
    if found is not None:
        run_id = found.info.run_id
        log_tags(client, run_id, run_tags)
        client.update_run(run_id, status="RUNNING")
    else:
        name = run_tags.get(schema.SWEEP_TAG, experiment)
        run_id = client.create_run(experiment_id, tags=run_tags, run_name=name).info.run_id
    log_new_params(client, run_id, param_values(params))
    return run_id


def log_sweep_plan(tracking_uri: str, run_id: str, *, plan: list[dict], spec_yaml: str) -> None:
    """What the parent run keeps of this run of the sweep: the spec, the planned trials (what
    `sweep analyze` lists as missing when a trial never ran) and the package versions."""
    client = MlflowClient(tracking_uri)
    client.log_text(run_id, spec_yaml, schema.SPEC_ARTIFACT)
    client.log_text(run_id, json.dumps(plan, indent=1), schema.PLAN_ARTIFACT)
    client.log_text(run_id, json.dumps(package_versions(), indent=1), schema.VERSIONS_ARTIFACT)


def package_versions() -> dict[str, str]:
    """The installed versions of the packages a result depends on (`VERSIONED_PACKAGES`)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(PackageNotFoundError):  # report what is installed
            out[name] = version(name)
    return out


def end_sweep_run(tracking_uri: str | None, run_id: str, status: str = "FINISHED") -> None:
    """Set the parent run's terminal status (FINISHED, FAILED or KILLED)."""
    check_status(status)
    MlflowClient(resolve_tracking_uri(tracking_uri)).set_terminated(run_id, status)
