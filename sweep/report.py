"""The analysis as files: CSV tables, a Markdown report, and the same folder logged to MLflow.

The report is written for a researcher reading it next to the paper: completeness first (what is
missing and why, so no mean is read without knowing its n), then the per-cell summaries, the paired
tests, rank stability, the Swin-vs-CNN comparison, the discretization diagnostics and the figures.
Every table of the report is also a CSV beside it, with full precision. The folder is logged as
it is to the sweep's parent run, under the names of trainables.mlflow_schema (``analysis/``,
``report.md``), which the sweep's descriptions link to (sweep.notes).
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pandas as pd

from sweep.analysis import (
    DISTINCT_VALUES_THRESHOLD,
    MANN_WHITNEY,
    SPIKINESS_THRESHOLD,
    Analysis,
)
from trainables import mlflow_schema as schema

MAX_LISTED = 200  # longer listings are cut in the Markdown; the CSVs hold everything


# --------------------------------------------------------------------------- Markdown helpers


def fmt(value: object) -> str:
    """A table cell: 4 significant digits for floats, '-' for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, limit: int = MAX_LISTED) -> str:
    """A GitHub-flavoured Markdown table of `df` (first `limit` rows, with a note if cut)."""
    if df.empty:
        return "_none_\n"
    shown = df.head(limit)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += [
        "| " + " | ".join(fmt(v) for v in row) + " |" for row in shown.itertuples(index=False)
    ]
    if len(df) > limit:
        lines.append(f"\n_{len(df) - limit} more rows in the CSV._")
    return "\n".join(lines) + "\n"


def _interval(lo: float, hi: float) -> str:
    return "-" if pd.isna(lo) or pd.isna(hi) else f"[{lo:.4g}, {hi:.4g}]"


# --------------------------------------------------------------------------- CSV tables


def write_tables(analysis: Analysis, out_dir: Path) -> dict[str, Path]:
    """Every table of the analysis as a CSV in `out_dir`."""
    tables = {
        "summary": analysis.summary,
        "normalized": analysis.norm.values,
        "pairwise": analysis.pairwise,
        "rank_stability": analysis.ranks,
        "arch_comparison": analysis.arch_comparison,
        "completeness": analysis.issues,
        "diagnostics": analysis.diagnostics,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, table in tables.items():
        paths[name] = out_dir / f"{name}.csv"
        table.to_csv(paths[name], index=False)
    return paths


# --------------------------------------------------------------------------- sections


def _completeness(analysis: Analysis) -> str:
    counts = pd.DataFrame([{k: ("-" if v is None else v) for k, v in analysis.counts.items()}])
    text = [
        "## Completeness\n",
        "Failed, killed, running and missing trials are listed here and never used or filled "
        "in; runs without a usable same-seed baseline are excluded from the normalized "
        "statistics only (`detail` says why: no finished baseline run, a baseline that "
        "finished without the metric, or a baseline of 0).\n",
        markdown_table(counts),
    ]
    if not analysis.issues.empty:
        text += [
            "\nTrials that do not contribute fully (`completeness.csv`):\n",
            markdown_table(analysis.issues),
        ]
    return "\n".join(text)


def _summary(analysis: Analysis) -> str:
    s = analysis.summary
    table = pd.DataFrame(
        {
            "split": s["split"],
            "arch": s["arch"],
            "scale": s["scale"],
            "recipe": s["recipe"],
            "n": s["n"],
            "mean": s["mean"],
            "SD": s["sd"],
            "95% CI (t)": [
                _interval(a, b) for a, b in zip(s["ci95_lo"], s["ci95_hi"], strict=True)
            ],
            "95% CI (bootstrap)": [
                _interval(a, b) for a, b in zip(s["boot_lo"], s["boot_hi"], strict=True)
            ],
            "n norm": s["norm_n"],
            "norm mean": s["norm_mean"],
            "norm SD": s["norm_sd"],
            "norm 95% CI (t)": [
                _interval(a, b) for a, b in zip(s["norm_ci95_lo"], s["norm_ci95_hi"], strict=True)
            ],
        }
    )
    return "\n".join(
        [
            f"## {analysis.metric} per (arch, scale, recipe)\n",
            "mean +- t(0.975, n-1) SD / sqrt(n), and a seeded percentile bootstrap of the mean "
            "(10,000 resamples). `norm` = 100 x run / same (arch, scale, seed, fold) baseline "
            "(`summary.csv`).\n",
            markdown_table(table, limit=10_000),
        ]
    )


def _pairwise(analysis: Analysis) -> str:
    p = analysis.pairwise
    table = p.drop(columns=["recipe_a_id", "recipe_b_id"])
    significant = int((p["p_holm"] < 0.05).sum())
    return "\n".join(
        [
            "## Paired recipe comparisons\n",
            "Per (arch, scale), every recipe pair over the seeds (and folds) both have: Wilcoxon "
            "signed-rank test (two-sided, zero differences dropped) on d = B - A of "
            f"{analysis.metric}, Holm correction within the (arch, scale) group, paired Cohen's "
            "d = mean(d) / SD(d). "
            f"{significant} pair(s) with Holm-adjusted p < 0.05 (`pairwise.csv`).\n",
            markdown_table(table, limit=10_000),
        ]
    )


def _ranks(analysis: Analysis) -> str:
    return "\n".join(
        [
            "## Rank stability (Kendall's W)\n",
            "Each seed ranks the recipes; W = 1 when every seed gives the same order, 0 for no "
            "agreement (tie-corrected); p from Friedman's chi-square m (n - 1) W "
            f"(`rank_stability.csv`). `mean_rank` is each recipe's rank averaged over the seeds, "
            f"counting up from the lowest {analysis.metric}: rank 1 is the worst recipe of a "
            f"seed, rank n the best (ties share the average rank).\n",
            markdown_table(analysis.ranks),
        ]
    )


def _archs(analysis: Analysis) -> str:
    a = analysis.arch_comparison
    if a.empty:
        return "## Swin vs CNN\n\n_No scale has finished runs of both architectures._\n"
    pair = f"{a['arch_a'].iloc[0]} vs {a['arch_b'].iloc[0]}"
    table = a.drop(columns=["recipe_id", "arch_a", "arch_b"])  # the pair is in the heading
    return "\n".join(
        [
            f"## {pair} per scale\n",
            f"Test: {MANN_WHITNEY} on {analysis.metric}; the architectures share seeds but not "
            "weights, so the samples are treated as independent (`arch_comparison.csv`).\n",
            markdown_table(table),
        ]
    )


def _diagnostics(analysis: Analysis) -> str:
    d = analysis.diagnostics
    have = int((d["hist_spikiness"].notna() | d["distinct_pred_values"].notna()).sum())
    flagged = d[d["discretized"]]
    text = [
        "## Attention-discretization diagnostics\n",
        f"Not in the paper. A run is flagged when its test-prediction histogram has spikiness > "
        f"{SPIKINESS_THRESHOLD} (share of the interior mass in isolated spikes above a running "
        f"median) or it predicts fewer than {DISTINCT_VALUES_THRESHOLD} distinct values. "
        f"{have} of {len(d)} run(s) have diagnostics; {len(flagged)} flagged "
        "(`diagnostics.csv`).\n",
    ]
    if not flagged.empty:
        text.append(
            markdown_table(
                flagged[["trial_key", "distinct_pred_values", "hist_spikiness", "reason"]]
            )
        )
    return "\n".join(text)


def _figures(figures: list[Path], out_dir: Path) -> str:
    pngs = [f for f in figures if f.suffix == ".png"]
    if not pngs:
        return "## Figures\n\n_none_\n"
    lines = ["## Figures\n", "PDF versions sit beside the PNGs.\n"]
    for f in pngs:
        rel = f.relative_to(out_dir).as_posix()
        lines.append(f"![{f.stem}]({rel})\n")
    return "\n".join(lines)


def write_report(
    analysis: Analysis, out_dir: Path, *, name: str, source: str, figures: list[Path]
) -> Path:
    """Write `out_dir/report.md`; returns its path."""
    out_dir = Path(out_dir)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"# Sweep `{name}`: analysis\n\nGenerated {now} from {source}. Headline metric: "
        f"`{analysis.metric}`. Runs table: `runs.parquet` / `runs.csv` (re-run offline with "
        f"`sweep analyze {name} --from-snapshot {out_dir}`).\n"
    )
    notes = "".join(f"\n> {n}\n" for n in analysis.notes)
    sections = [
        header + notes,
        _completeness(analysis),
        _summary(analysis),
        _pairwise(analysis),
        _ranks(analysis),
        _archs(analysis),
        _diagnostics(analysis),
        _figures(figures, out_dir),
    ]
    path = out_dir / schema.REPORT_ARTIFACT
    path.write_text("\n".join(sections))
    return path


# --------------------------------------------------------------------------- MLflow


def log_to_parent(
    tracking_uri: str,
    parent_run_id: str,
    out_dir: Path,
    artifact_path: str = schema.ANALYSIS_ARTIFACT,
) -> None:
    """Log the whole analysis folder as artifacts of the sweep's parent run."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).log_artifacts(parent_run_id, str(out_dir), artifact_path)
