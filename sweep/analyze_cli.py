"""`sweep analyze NAME`: from a sweep's tracked runs to the report, tables and figures.

Steps: read the runs (MLflow, or a snapshot with --from-snapshot), save the snapshot beside the
report, compute the statistics (`sweep.analysis`), write the CSVs and the Markdown report
(`sweep.report`), draw the figures (`sweep.figures`), and log the folder as artifacts of the sweep's
parent run. The tracking URI comes from --tracking-uri, else MLFLOW_TRACKING_URI, else
sqlite:///./mlflow.db. An unknown sweep exits with code 2 and lists the experiments that exist.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///./mlflow.db"


def resolve_tracking_uri(explicit: str | None) -> str:
    """The flag, else MLFLOW_TRACKING_URI, else the local sqlite store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def default_out_dir(name: str) -> Path:
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

    Raises sweep.runs.SweepNotFound for an unknown sweep, FileNotFoundError for a missing snapshot.
    """
    from sweep import figures, report, runs
    from sweep.analysis import METRICS, analyze_table

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
            "No plan.json on the parent run: trials that never started cannot be listed as missing."
        )
    files = runs.save_snapshot(sweep_runs, out_dir)
    result = analyze_table(sweep_runs.table, sweep_runs.plan, metric=metric, n_boot=n_boot)
    result.notes.extend(notes)
    files += report.write_tables(result, out_dir).values()
    files += figures.render_figures(
        result, sweep_runs.table, sweep_runs.curves, sweep_runs.plan, out_dir / "figures"
    )
    path = report.write_report(result, out_dir, name=name, source=source, figures=files)
    logged = None
    if log_to_mlflow and from_snapshot is None and sweep_runs.parent_run_id is not None:
        report.log_to_parent(uri, sweep_runs.parent_run_id, out_dir)
        logged = sweep_runs.parent_run_id
        from sweep.notes import refresh_analysis  # the sweep's notes point to the report

        refresh_analysis(uri, name, logged)
    return AnalyzeResult(path, out_dir, [*files, path], logged)


def main(args: argparse.Namespace) -> int:
    """Entry point of `sweep analyze`; prints the report's path."""
    from sweep.runs import SweepNotFound

    try:
        result = analyze(
            args.name,
            out=Path(args.out) if args.out else None,
            metric=args.metric,
            tracking_uri=args.tracking_uri,
            from_snapshot=Path(args.from_snapshot) if args.from_snapshot else None,
        )
    except (SweepNotFound, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.report)
    return 0
