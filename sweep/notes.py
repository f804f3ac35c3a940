"""What a sweep's MLflow experiment and parent run say about themselves, and the trials view.

The MLflow UI (3.17) shows an experiment's and a run's ``mlflow.note.content`` tag as Markdown.
`describe_sweep` writes both, when the sweep starts and again when it ends: the sweep name, the
grid (each axis with its values and counts), the data and protocol, the storage folder and the
spec, how many trials finished or failed, and where the analysis report and its figures are (the
parent run's ``analysis/`` artifacts; the parent's note shows the figures inline).

The trials view. MLflow 3.17's UI picks the experiment page's layout from a "workflow type" kept
in the browser (default: GenAI) or the URL's ``workflowType`` parameter; the experiment's
``mlflow.experimentKind`` tag is what older and hosted versions read, so the tracker sets it
too. The runs table nests child runs under a collapsed parent, and which rows are expanded cannot
be set from outside. A *shared view* can be: the UI's "Share" button stores a view (sorting,
columns, grouping) in the experiment tag ``mlflow.sharedViewState.<key>``, and a URL with
``viewStateShareKey=<key>`` opens it. `describe_sweep` stores the view `TRIALS_VIEW_KEY`: trials
grouped by (arch, scale, recipe), groups open, so the seeds (and folds) of one configuration sit
together with their mean metrics; the parent run is under "Additional runs".
`experiment_page_url` is the page that opens with it (what `sweep ui` prints).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from sweep.plan import Plan
from sweep.spec import SweepSpec
from trainables import mlflow_schema as schema

TRIALS_VIEW_KEY = "sweep-trials"
SHARED_VIEW_TAG = "mlflow.sharedViewState."
ANALYSIS_MARK = "- **Analysis**:"  # the notes end with this part; refresh_analysis replaces it
TRIALS_VIEW = {
    "groupBy": {
        "aggregateFunction": "average",
        "groupByKeys": [
            {"mode": "tag", "groupByData": axis} for axis in ("arch", "scale", "recipe")
        ],
    },
    "selectedColumns": [
        "attributes.`Dataset`",
        "metrics.`test_auprc`",
        "metrics.`val_auprc`",
        "metrics.`best_epoch`",
        "tags.`seed`",
        "tags.`fold`",
    ],
    "orderByKey": "attributes.start_time",
    "orderByAsc": False,
}


def experiment_page_url(base: str, experiment_id: str) -> str:
    """The experiment's page in the UI at ``base``, in the training view, on the trials view."""
    query = urlencode({"workflowType": "machine_learning", "viewStateShareKey": TRIALS_VIEW_KEY})
    return f"{base.rstrip('/')}/#/experiments/{quote(str(experiment_id))}/runs?{query}"


def run_page_path(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A run's page (or one of its artifacts) as a link inside the UI (hash route)."""
    path = f"#/experiments/{experiment_id}/runs/{run_id}"
    return f"{path}/artifacts/{artifact}" if artifact else path


# --------------------------------------------------------------------------- the texts


def grid_lines(plan: Plan) -> list[str]:
    """One Markdown table row per axis: its values and how many trials each value has."""
    rows = ["| axis | values (trials each) |", "|---|---|"]
    for axis, counts in plan.counts().items():
        values = ", ".join(f"{value} ({n})" for value, n in counts.items())
        rows.append(f"| {axis} | {values} |")
    return rows


def status_line(planned: int, finished: Iterable[str] | None, failed: Iterable[str] | None) -> str:
    if finished is None:
        return f"**Running** since {_now()}: {planned} trials planned."
    finished, failed = list(finished), list(failed or ())
    line = f"**{len(finished)} of {planned} trials finished**, {len(failed)} not finished"
    if failed:
        shown = ", ".join(f"`{k}`" for k in failed[:20]) + (" ..." if len(failed) > 20 else "")
        line += f" ({shown})"
    return f"{line} (updated {_now()})."


@dataclass(frozen=True)
class NoteFacts:
    """What the sweep's description says besides its spec and plan: where the sweep lives, how
    far it got (``finished`` None: still running) and the parent run's analysis figures."""

    storage: str
    experiment_id: str
    parent_run_id: str
    finished: list[str] | None = None
    failed: list[str] | None = None
    figures: list[str] = field(default_factory=list)  # artifact paths of the parent run


def sweep_note(
    spec: SweepSpec, plan: Plan, facts: NoteFacts, *, inline_figures: bool = False
) -> str:
    """The description of the sweep (Markdown): the experiment's, or with ``inline_figures`` the
    parent run's (the figures shown, not only linked)."""
    experiment_id, parent_run_id, storage = facts.experiment_id, facts.parent_run_id, facts.storage
    parent = run_page_path(experiment_id, parent_run_id)
    lines = [
        f"## Sweep `{spec.name}`",
        "",
        "NVFP4 quantization-aware training study: one child run per trial, named by its trial "
        f"key, under the parent run [{spec.name}]({parent}).",
        "",
        status_line(len(plan.trials), facts.finished, facts.failed),
        "",
        *grid_lines(plan),
        "",
        f"- **Data**: {_data_words(spec)}",
        f"- **Protocol**: {_protocol_words(spec)}",
        f"- **Storage**: `{storage}` (checkpoints, ledger, Ray Tune state)",
        f"- **Spec**: `{storage.rstrip('/')}/spec.yaml`, also "
        f"{_artifact_link(experiment_id, parent_run_id, schema.SPEC_ARTIFACT)} and "
        f"{_artifact_link(experiment_id, parent_run_id, schema.PLAN_ARTIFACT)} on the parent run",
        *analysis_lines(spec.name, experiment_id, parent_run_id, facts.figures, inline_figures),
    ]
    return "\n".join(lines) + "\n"


def analysis_lines(
    name: str, experiment_id: str, run_id: str, figures: list[str], inline: bool
) -> list[str]:
    """The note's last part: where the report and figures are (the figures shown if ``inline``)."""
    if not figures:
        return [
            f"{ANALYSIS_MARK} not logged yet; `sweep analyze {name}` (or `analyze: true` in "
            f"the spec) logs the report and figures under `{schema.ANALYSIS_ARTIFACT}/` of the "
            "parent run"
        ]
    report = f"{schema.ANALYSIS_ARTIFACT}/{schema.REPORT_ARTIFACT}"
    lines = [
        f"{ANALYSIS_MARK} {_artifact_link(experiment_id, run_id, report)} and figures on the "
        "parent run:"
    ]
    lines += [f"  - {_artifact_link(experiment_id, run_id, path)}" for path in figures]
    if inline:
        lines.append("")
        for path in figures:
            source = "get-artifact?" + urlencode({"path": path, "run_uuid": run_id})
            lines += [f"![{path.rsplit('/', 1)[-1]}]({source})", ""]
    return lines


def _artifact_link(experiment_id: str, run_id: str, path: str) -> str:
    """A Markdown link to the run's artifact ``path``, named by its file name."""
    return f"[{path.rsplit('/', 1)[-1]}]({run_page_path(experiment_id, run_id, path)})"


def _data_words(spec: SweepSpec) -> str:
    data = spec.data
    if data.synthetic is not None:
        s = data.synthetic
        source = (
            f"synthetic ({s.patients} patients x {s.slices_per_patient} slices, {s.size} px, "
            f"seed {s.seed})"
        )
    else:
        source = f"`{data.path}`"
    split = "holdout" if data.split == "holdout" else f"{data.n_folds}-fold CV"
    return f"{source}, {split} split (split seed {data.split_seed}), {data.image_size} px"


def _protocol_words(spec: SweepSpec) -> str:
    if not spec.protocol:
        return "the paper's defaults"
    overrides = ", ".join(f"{k}={v}" for k, v in sorted(spec.protocol.items()))
    return f"the paper's, with {overrides}"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


# --------------------------------------------------------------------------- writing them


def describe_sweep(
    tracking_uri: str,
    spec: SweepSpec,
    plan: Plan,
    *,
    storage: str,
    parent_run_id: str,
    finished: Iterable[str] | None = None,
    failed: Iterable[str] | None = None,
) -> None:
    """Write the experiment's and the parent run's descriptions and the trials view. The figures
    listed are the PNGs the parent run holds under ``analysis/figures`` right now."""
    from mlflow.tracking import MlflowClient

    from trainables.mlflow_store import set_experiment_note, set_run_note

    client = MlflowClient(tracking_uri)
    facts = NoteFacts(
        storage,
        client.get_run(parent_run_id).info.experiment_id,
        parent_run_id,
        None if finished is None else list(finished),
        None if failed is None else list(failed),
        analysis_figures(client, parent_run_id),
    )
    experiment_id = facts.experiment_id
    set_experiment_note(client, experiment_id, sweep_note(spec, plan, facts))
    set_run_note(client, parent_run_id, sweep_note(spec, plan, facts, inline_figures=True))
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + TRIALS_VIEW_KEY, view_state())


def refresh_analysis(tracking_uri: str, name: str, parent_run_id: str) -> None:
    """After `sweep analyze` logged the report: rewrite the analysis part of both notes (the
    rest, written by the sweep, stays). Notes the sweep never wrote are left alone."""
    from mlflow.tracking import MlflowClient

    from trainables.mlflow_store import set_experiment_note, set_run_note

    client = MlflowClient(tracking_uri)
    run = client.get_run(parent_run_id)
    experiment_id = run.info.experiment_id
    figures = analysis_figures(client, parent_run_id)
    old = client.get_experiment(experiment_id).tags.get(schema.NOTE_TAG, "")
    if ANALYSIS_MARK in old:
        lines = analysis_lines(name, experiment_id, parent_run_id, figures, inline=False)
        set_experiment_note(client, experiment_id, _replace_analysis(old, lines))
    old = run.data.tags.get(schema.NOTE_TAG, "")
    if ANALYSIS_MARK in old:
        lines = analysis_lines(name, experiment_id, parent_run_id, figures, inline=True)
        set_run_note(client, parent_run_id, _replace_analysis(old, lines))


def _replace_analysis(note: str, lines: list[str]) -> str:
    return note[: note.rindex(ANALYSIS_MARK)] + "\n".join(lines) + "\n"


def analysis_figures(client, run_id: str) -> list[str]:
    """Artifact paths of the PNG figures under ``analysis/figures`` of the run (sorted)."""
    try:
        listed = client.list_artifacts(
            run_id, f"{schema.ANALYSIS_ARTIFACT}/{schema.FIGURES_ARTIFACT}"
        )
    except Exception:  # no such folder yet (stores differ in how they say so)
        return []
    return sorted(f.path for f in listed if not f.is_dir and f.path.endswith(".png"))


def view_state() -> str:
    """The trials view as the UI's shared-view JSON."""
    return json.dumps(TRIALS_VIEW, sort_keys=True)
