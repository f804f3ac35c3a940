"""A sweep's analysis, from its tracked runs to the report, tables and figures (`sweep analyze`).

Steps: read the runs (MLflow, or a snapshot), save the snapshot beside the report (sweep.runs),
compute the statistics (sweep.analysis), write the CSVs and the Markdown report (sweep.report),
draw the figures (sweep.figures), log the folder as artifacts of the sweep's parent run and point
the sweep's descriptions to it (sweep.notes). The CLI (sweep.analyze_cli) and a sweep that ends
with ``analyze: true`` (sweep.runner) both call `analyze`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainables import mlflow_schema as schema


def default_out_dir(name: str) -> Path:
    """Where the analysis of sweep ``name`` goes unless told otherwise: results/NAME/analysis."""
    return Path("results") / name / "analysis"


@dataclass(frozen=True)
class AnalyzeResult:
    report: Path
    out_dir: Path
    files: list[Path]
    logged_to_run: str | None  # the parent run id the folder was logged to, if any


def analyze(
    name: str,
    *,
    out: Path | None = None,
    metric: str = "test_auprc",
    tracking_uri: str | None = None,
    from_snapshot: Path | None = None,
    n_boot: int = 10_000,
    log_to_mlflow: bool = True,
) -> AnalyzeResult:
    """Analyse sweep `name` and write everything under `out` (default results/NAME/analysis).
    The store is `tracking_uri` by the one tracking-URI rule (trainables.mlflow_store).

    Raises sweep.runs.SweepNotFound for an unknown sweep, FileNotFoundError for a missing
    snapshot, ValueError for an unknown metric or a tracking URI that is not one.
    """
    from sweep import figures, report, runs
    from sweep.analysis import METRICS, analyze_table
    from trainables.mlflow_store import resolve_tracking_uri

    if metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    out_dir = Path(out) if out is not None else default_out_dir(name)
    notes = []
    if from_snapshot is not None:
        sweep_runs = runs.load_snapshot(from_snapshot, name)
        source = f"snapshot {from_snapshot}"
        notes.append("Analysed offline from a snapshot: nothing was logged to MLflow.")
    else:
        uri = resolve_tracking_uri(tracking_uri)
        sweep_runs = runs.read_sweep(uri, name)
        runs.fetch_curves(sweep_runs, figures.fig5_trials(sweep_runs.table))
        source = f"MLflow {uri} (experiment `{name}`)"
        if sweep_runs.parent_run_id is None:
            notes.append(
                "No parent run (tag sweep_parent=true) found: the report is not logged to MLflow."
            )
    if sweep_runs.plan is None:
        notes.append(
            f"No {schema.PLAN_ARTIFACT} on the parent run: trials that never started cannot be "
            "listed as missing."
        )
    files = runs.save_snapshot(sweep_runs, out_dir)
    result = analyze_table(sweep_runs.table, sweep_runs.plan, metric=metric, n_boot=n_boot)
    result.notes.extend(notes)
    files += report.write_tables(result, out_dir).values()
    files += figures.render_figures(
        result,
        sweep_runs.table,
        sweep_runs.curves,
        sweep_runs.plan,
        out_dir / schema.FIGURES_ARTIFACT,
    )
    path = report.write_report(result, out_dir, name=name, source=source, figures=files)
    logged = None
    if log_to_mlflow and from_snapshot is None and sweep_runs.parent_run_id is not None:
        report.log_to_parent(uri, sweep_runs.parent_run_id, out_dir)
        logged = sweep_runs.parent_run_id
        from sweep.notes import refresh_analysis  # the sweep's notes point to the report

        refresh_analysis(uri, name, logged)
    return AnalyzeResult(path, out_dir, [*files, path], logged)
