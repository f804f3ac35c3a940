"""`sweep analyze` end to end on a real sqlite MLflow store (conftest.py's sweeps)."""

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from sweep.cli import main

pytestmark = pytest.mark.e2e  # through a real MLflow store, the CLI and every output file

FILES = [
    "report.md",
    "runs.parquet",
    "runs.csv",
    "snapshot.json",
    "summary.csv",
    "normalized.csv",
    "pairwise.csv",
    "rank_stability.csv",
    "arch_comparison.csv",
    "completeness.csv",
    "diagnostics.csv",
]


@pytest.fixture(scope="module")
def analysed(sweep_store, tmp_path_factory):
    """`sweep analyze` of the complete sweep, run once for the module."""
    out = tmp_path_factory.mktemp("analysis") / "complete"
    code = main(
        ["analyze", sweep_store.complete, "--out", str(out), "--tracking-uri", sweep_store.uri]
    )
    assert code == 0
    return out


def test_writes_report_tables_and_figures(analysed, capsys):
    for name in FILES:
        assert (analysed / name).is_file(), name
    figures = sorted(p.name for p in (analysed / "figures").iterdir())
    assert figures == sorted(
        f"{s}.{e}"
        for e in ("png", "pdf")
        for s in (
            "fig4_auprc_vs_scale",
            "fig5_pr_curves_histograms",
            "fig6_normalized_auprc",
            "fig7_kfold",
        )
    )
    assert (analysed / "figures" / "fig6_normalized_auprc.pdf").read_bytes()[:5] == b"%PDF-"
    report = (analysed / "report.md").read_text()
    for heading in (
        "## Completeness",
        "## test_auprc per (arch, scale, recipe)",
        "## Paired recipe comparisons",
        "## Rank stability (Kendall's W)",
        "## swin vs cnn per scale",
        "## Attention-discretization diagnostics",
    ):
        assert heading in report
    assert "Mann-Whitney U (two-sided)" in report
    assert "![fig6_normalized_auprc](figures/fig6_normalized_auprc.png)" in report


def test_summary_has_every_cell_with_the_logged_values(analysed, sweep_store):
    summary = pd.read_csv(analysed / "summary.csv")
    holdout = summary[summary["split"] == "holdout"]
    assert len(holdout) == 2 * 2 * 3 and (holdout["n"] == 3).all()
    expected = sweep_store.expected[sweep_store.complete]
    cell = holdout.set_index(["arch", "scale", "recipe"]).loc[("swin", "4m", "nvfp4")]
    values = [expected[f"swin-4m-nvfp4-s{s}-holdout"] for s in (2026, 2027, 2028)]
    assert cell["mean"] == pytest.approx(sum(values) / 3)
    base = [expected[f"swin-4m-baseline-s{s}-holdout"] for s in (2026, 2027, 2028)]
    norm = [100 * v / b for v, b in zip(values, base, strict=True)]
    assert cell["norm_mean"] == pytest.approx(sum(norm) / 3)
    kfold = summary[summary["split"] == "kfold"]
    assert len(kfold) == 4 and (kfold["n"] == 3).all()


def test_report_is_logged_to_the_parent_run(analysed, sweep_store):
    client = MlflowClient(sweep_store.uri)
    parent = sweep_store.parents[sweep_store.complete]
    logged = {a.path for a in client.list_artifacts(parent, "analysis")}
    assert {"analysis/report.md", "analysis/summary.csv", "analysis/figures"} <= logged


def test_prints_the_report_path(sweep_store, tmp_path, capsys, monkeypatch):
    # The tracking URI from the environment when no flag is given (conftest sets it).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweep_store.uri)
    out = tmp_path / "inc"
    assert main(["analyze", sweep_store.incomplete, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    report = (out / "report.md").read_text()
    # Missing, failed and running trials are listed, never filled in.
    assert "cnn-4m-baseline-s2026-holdout | cnn | 4m | baseline | 2026 | holdout |  | missing" in (
        report
    )
    assert "| FAILED | failed |" in report and "| RUNNING | running |" in report
    assert (
        "| cnn-500k-nvfp4-s2027-holdout | cnn | 500k | nvfp4 | 2027 | holdout | FINISHED | "
        "no baseline |" in report
    )
    flagged = pd.read_csv(out / "diagnostics.csv").query("discretized")
    assert flagged["trial_key"].tolist() == ["cnn-500k-nvfp4-s2026-holdout"]


def test_rerun_from_snapshot_is_offline_with_the_val_metric(
    analysed, sweep_store, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////nonexistent/dir/mlflow.db")
    out = tmp_path / "offline"
    assert (
        main(
            [
                "analyze",
                sweep_store.complete,
                "--from-snapshot",
                str(analysed),
                "--out",
                str(out),
                "--metric",
                "val_auprc",
            ]
        )
        == 0
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "runs.parquet"), pd.read_parquet(analysed / "runs.parquet")
    )
    assert (out / "figures" / "fig5_pr_curves_histograms.png").is_file()  # curves travel too
    report = (out / "report.md").read_text()
    assert "offline from a snapshot" in report
    assert "## val_auprc per (arch, scale, recipe)" in report
    normalized = pd.read_csv(out / "normalized.csv").set_index("trial_key")
    expected = sweep_store.expected[sweep_store.complete]
    key = "cnn-4m-nvfp4-s2027-holdout"
    assert normalized.loc[key, "value"] == pytest.approx(expected[key] - 0.02)  # val, not test


def test_unknown_sweep_exits_2_and_lists_experiments(sweep_store, tmp_path, capsys):
    code = main(
        [
            "analyze",
            "no-such-sweep",
            "--out",
            str(tmp_path / "x"),
            "--tracking-uri",
            sweep_store.uri,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "no MLflow experiment named 'no-such-sweep'" in err
    assert sweep_store.complete in err and sweep_store.incomplete in err
    assert not (tmp_path / "x").exists()


def test_missing_snapshot_exits_2(tmp_path, capsys):
    assert main(["analyze", "s", "--from-snapshot", str(tmp_path / "none")]) == 2
    assert "snapshot not found" in capsys.readouterr().err


def test_bad_metric_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "s", "--metric", "auprc"])
    assert exc.value.code == 2
    assert "test_auprc" in capsys.readouterr().err
