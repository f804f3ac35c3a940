"""`sweep analyze NAME`: the command line of the analysis (sweep.analyze).

Reads the runs from MLflow (or a snapshot with --from-snapshot) and writes the report, tables and
figures under --out (default results/NAME/analysis), then prints the report's path. The tracking
URI comes from --tracking-uri, else MLFLOW_TRACKING_URI, else mlflow.db in the current directory
(trainables.mlflow_store.resolve_tracking_uri). An unknown sweep exits with code 2 and lists the
experiments that exist; a missing snapshot, an unknown metric or a tracking URI that is not a URI
exit with code 2 too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(args: argparse.Namespace) -> int:
    """Entry point of `sweep analyze`; prints the report's path."""
    from sweep.analyze import analyze
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
