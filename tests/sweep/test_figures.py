"""Figures render (PNG + PDF) for complete and incomplete grids, and say what is missing."""

import pandas as pd
import pytest

from sweep import figures, runs
from sweep.analysis import analyze_table


def texts(fig) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts)


def assert_files(paths, stems, formats=("png", "pdf")):
    assert sorted(p.name for p in paths) == sorted(f"{s}.{e}" for s in stems for e in formats)
    for p in paths:
        head = p.read_bytes()[:5]
        assert head == (b"\x89PNG\r" if p.suffix == ".png" else b"%PDF-"), p


def load(sweep_store, name):
    swept = runs.read_sweep(sweep_store.uri, name)
    runs.fetch_curves(swept, figures.fig5_trials(swept.table))
    return swept, analyze_table(swept.table, swept.plan, n_boot=200)


ALL = ["fig4_auprc_vs_scale", "fig5_pr_curves_histograms", "fig6_normalized_auprc", "fig7_kfold"]


def test_complete_grid_draws_every_panel(sweep_store):
    # Saving the complete grid's PNGs and PDFs is covered end to end by test_analyze_cli.
    swept, result = load(sweep_store, sweep_store.complete)
    axes = figures.grid_axes(swept.table, swept.plan)
    assert axes == {
        "arch": ["cnn", "swin"],
        "scale": ["500k", "4m"],
        "recipe": ["baseline", "nvfp4", "2d_rht_sr"],
    }
    fig4 = figures.fig4_auprc_vs_scale(result, axes)
    assert [ax.get_title() for ax in fig4.axes] == ["cnn", "swin"]  # no missing-cell notes
    assert all(len(ax.containers) == 3 for ax in fig4.axes)  # an errorbar line per recipe
    fig6 = figures.fig6_normalized(result, axes, swept.plan)
    assert [ax.get_title() for ax in fig6.axes] == [
        "cnn / 500k",
        "cnn / 4m",
        "swin / 500k",
        "swin / 4m",
    ]
    assert not texts(fig6)
    fig7 = figures.fig7_kfold(result)
    assert [ax.get_title() for ax in fig7.axes] == ["4m"]
    assert len(fig7.axes[0].get_xticklabels()) == 4  # swin/cnn x baseline/2d_rht_sr


def test_fig5_uses_the_lowest_seed_at_the_smallest_scale(sweep_store):
    swept, _ = load(sweep_store, sweep_store.complete)
    assert sorted(figures.fig5_trials(swept.table)) == sorted(
        f"{a}-500k-{r}-s2026-holdout"
        for a in ("cnn", "swin")
        for r in ("baseline", "nvfp4", "2d_rht_sr")
    )
    fig = figures.fig5_curves(swept.table, swept.curves, figures.grid_axes(swept.table))
    assert len(fig.axes) == 4  # 2 archs x (PR curve, histogram)
    assert all(len(ax.get_lines()) == 3 for ax in fig.axes[::2])  # a PR staircase per recipe


def test_incomplete_grid_draws_empty_cells_with_notes(sweep_store, tmp_path):
    swept, result = load(sweep_store, sweep_store.incomplete)
    paths = figures.render_figures(
        result, swept.table, swept.curves, swept.plan, tmp_path, formats=("png",)
    )
    assert_files(paths, ALL[:3], formats=("png",))  # no folds: no Fig 7
    axes = figures.grid_axes(swept.table, swept.plan)
    assert axes["scale"] == ["500k", "4m"]  # 4m is planned but was never tracked
    fig6 = figures.fig6_normalized(result, axes, swept.plan)
    assert "no normalized runs" in fig6.axes[1].texts[0].get_text()  # cnn / 4m
    # 500k: nvfp4 s2026 and 2d_rht_sr s2026 normalize; s2027 lacks its baseline, s2028 is missing.
    assert [ax.get_title() for ax in fig6.axes] == [
        "cnn / 500k (4 of 6 planned missing)",
        "cnn / 4m (6 of 6 planned missing)",
    ]
    fig4 = figures.fig4_auprc_vs_scale(result, axes)
    assert fig4.axes[0].get_title() == "cnn (3 cell(s) without runs)"  # 4m x 3 recipes


def single(seed=2026, scale="500k", recipes=("baseline", "nvfp4"), status="FINISHED"):
    rows = [
        {
            "trial_key": f"cnn-{scale}-{r}-s{seed}-holdout",
            "run_id": f"r{i}",
            "arch": "cnn",
            "scale": scale,
            "recipe": r,
            "recipe_id": i,
            "seed": seed,
            "fold": "holdout",
            "status": status,
            "test_auprc": 0.6 - 0.01 * i,
        }
        for i, r in enumerate(recipes)
    ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "table",
    [single(), single(recipes=("nvfp4",)), single(status="FAILED"), single().iloc[:0]],
    ids=["single-seed-single-scale", "no-baseline", "all-failed", "no-runs"],
)
def test_degenerate_tables_render(table, tmp_path):
    result = analyze_table(table, None, n_boot=50)
    paths = figures.render_figures(result, table, {}, None, tmp_path, formats=("png",))
    assert_files(paths, ALL[:3], formats=("png",))
    fig5 = figures.fig5_curves(table, {}, figures.grid_axes(table))
    assert "no pr_curve.json" in texts(fig5)


def test_kfold_only_sweep_renders_fig7(tmp_path):
    rows = [
        {
            "trial_key": f"{a}-4m-{r}-s2026-f{k}",
            "run_id": f"{a}{r}{k}",
            "arch": a,
            "scale": "4m",
            "recipe": r,
            "recipe_id": rid,
            "seed": 2026,
            "fold": f"f{k}",
            "status": "FINISHED",
            "test_auprc": 0.7 + 0.01 * k,
        }
        for a in ("swin", "cnn")
        for rid, r in ((0, "baseline"), (5, "2d_rht_sr"))
        for k in range(5)
    ]
    table = pd.DataFrame(rows)
    result = analyze_table(table, None, n_boot=50)
    paths = figures.render_figures(result, table, {}, None, tmp_path, formats=("png",))
    assert_files(paths, ALL, formats=("png",))
    labels = [t.get_text() for t in figures.fig7_kfold(result).axes[0].get_xticklabels()]
    assert labels == ["swin\nbaseline", "swin\n2d_rht_sr", "cnn\nbaseline", "cnn\n2d_rht_sr"]
