"""The names a sweep writes into MLflow and reads back: one place for writer and reader.

The layout (docs/design.md, "MLflow"): one experiment per sweep, named after the sweep; one parent
run per sweep, tagged ``sweep_parent=true``, holding the plan, the package versions and the
analysis report; one child run per trial, named by its ``trial_key`` and tagged with it and with
the trial's coordinates (`TRIAL_TAGS`), holding per-epoch metrics, the final metrics one step
past the last epoch, and the small artifacts below.

The trial side (trainables.loop, trainables.tracking) and the sweep's parent run
(trainables.mlflow_store) write these names; the sweep side (sweep.runs, sweep.notes,
sweep.report) reads them. Both find runs with the same queries (`tag_filter`, `search_all`).
Changing a name here changes both at once; runs logged before the change keep the old name, so
do it only with a reader for both.
"""

from __future__ import annotations

__all__ = [
    "ANALYSIS_ARTIFACT",
    "CONFIG_ARTIFACT",
    "EXPERIMENT_KIND_TAG",
    "FIGURES_ARTIFACT",
    "FINAL_STEP_TAG",
    "GIT_SHA_LENGTH",
    "HISTOGRAM_ARTIFACT",
    "HISTORY_ARTIFACT",
    "NOTE_TAG",
    "PAGE_SIZE",
    "PARENT_TAG",
    "PARENT_VALUE",
    "PLAN_ARTIFACT",
    "PR_CURVE_ARTIFACT",
    "QUANT_ERROR_ARTIFACT",
    "REPORT_ARTIFACT",
    "SPEC_ARTIFACT",
    "SWEEP_TAG",
    "TRAINING_KIND",
    "TRIAL_KEY_TAG",
    "TRIAL_TAGS",
    "VERSIONS_ARTIFACT",
    "WEIGHTS_ARTIFACT",
    "search_all",
    "short_sha",
    "split_artifact",
    "tag_filter",
]

# ---------------------------------------------------------------------------------------- tags

SWEEP_TAG = "sweep"  # every run of a sweep, parent and children: the sweep's name
TRIAL_KEY_TAG = "trial_key"  # a child run's identity (docs/design.md, "Trial identity")
PARENT_TAG = "sweep_parent"
PARENT_VALUE = "true"
FINAL_STEP_TAG = "final_step"  # the step the final metrics went to: the tracker reads it back

# A child run's flat tags, in the order the runs table shows them (sweep.runs).
TRIAL_TAGS = (
    SWEEP_TAG,
    TRIAL_KEY_TAG,
    "arch",
    "scale",
    "recipe",
    "recipe_id",
    "seed",
    "fold",
    "split_seed",
    "config_hash",
    "git_sha",
)

# MLflow's own tags, used by its UI.
NOTE_TAG = "mlflow.note.content"  # a run's or an experiment's description, Markdown in the UI
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"  # MLflow 3's "Machine learning" experiment kind

# The ``git_sha`` tag of parent and child runs: the short form `git describe` and the trial's
# code version (trainables.config) use, so the two can be compared by eye and by equality.
GIT_SHA_LENGTH = 12


def short_sha(sha: str | None) -> str:
    """``sha`` cut to the tag's length, or "unknown" outside a git checkout."""
    return sha[:GIT_SHA_LENGTH] if sha else "unknown"


# ----------------------------------------------------------------------------------- artifacts
# A trial's artifacts sit at the root of its run; the test split's curves carry no suffix, the
# validation split's ``_val`` (`split_artifact`).

CONFIG_ARTIFACT = "config.json"
HISTORY_ARTIFACT = "history.json"
PR_CURVE_ARTIFACT = "pr_curve.json"
HISTOGRAM_ARTIFACT = "pred_hist.json"
QUANT_ERROR_ARTIFACT = "quantization_error.json"
WEIGHTS_ARTIFACT = "best_model.pt"

# The parent run's: what the sweep planned and ran with, and the folder `sweep analyze` logs
# (report.md, the CSV tables and figures/, as written locally: sweep.report).
PLAN_ARTIFACT = "plan.json"
VERSIONS_ARTIFACT = "versions.json"
SPEC_ARTIFACT = "spec.yaml"
ANALYSIS_ARTIFACT = "analysis"
REPORT_ARTIFACT = "report.md"
FIGURES_ARTIFACT = "figures"


def split_artifact(name: str, split: str) -> str:
    """``name`` for ``split``: as it is for the test split, ``pr_curve_val.json`` for "val"."""
    if split == "test":
        return name
    stem, dot, ext = name.rpartition(".")
    return f"{stem}_{split}{dot}{ext}" if dot else f"{name}_{split}"


# ------------------------------------------------------------------------------------- queries
# How both sides find runs by these tags. No MLflow import: ``client`` is an MlflowClient, so the
# reader (sweep.runs) stays importable without MLflow.

PAGE_SIZE = 5000  # runs per search_runs call: one SQL query per page, not one call per run


def tag_filter(tag: str, value: object) -> str:
    """The search clause ``tags.`tag` = 'value'``, quoted with whichever quote ``value`` lacks."""
    text = str(value)
    if "'" not in text:
        return f"tags.`{tag}` = '{text}'"
    if '"' not in text:
        return f'tags.`{tag}` = "{text}"'
    raise ValueError(f"tag value {text!r} holds both quote characters; MLflow cannot search it")


def search_all(
    client, experiment_ids: list[str], filter_string: str = "", page_size: int = PAGE_SIZE
) -> list:
    """Every active run of ``experiment_ids`` matching ``filter_string``, following page tokens."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string, max_results=page_size, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs
