"""Figures render (PNG + PDF) for complete and incomplete grids, and say what is missing."""

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection

from sweep import figures, runs
from sweep.analysis import analyze_table
from trainables.metrics import PixelScores


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
    assert [ax.get_title() for ax in fig6.axes] == [  # the paper's rows: Swin, then CNN
        "swin / 500k",
        "swin / 4m",
        "cnn / 500k",
        "cnn / 4m",
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


# --------------------------------------------------------------------------- drawn right


def _split_result(seed: int, discrete: bool):
    """A run's real test metrics and figure data, from trainables.metrics."""
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(200_000, generator=g) < 0.05).float()
    logits = torch.randn(200_000, generator=g) + 3 * target - 1.5
    if discrete:  # a staircase model: a handful of distinct probabilities
        logits = logits.round()
    scores = PixelScores()
    scores.update(torch.sigmoid(logits), target)
    return scores.result()


def test_fig5_draws_pr_curves_whose_area_is_the_logged_ap():
    table = single(recipes=("baseline", "nvfp4"))
    results = {key: _split_result(i, discrete=i == 1) for i, key in enumerate(table["trial_key"])}
    table["test_auprc"] = [results[k].metrics["auprc"] for k in table["trial_key"]]
    curves = {k: {"pr_curve": r.pr_curve, "pred_hist": r.histogram} for k, r in results.items()}
    assert len(results[table["trial_key"][0]].pr_curve["recall"]) == 512  # downsampled
    assert len(results[table["trial_key"][1]].pr_curve["recall"]) < 20  # every step kept
    fig = figures.fig5_curves(table, curves, figures.grid_axes(table))
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["baseline (s2026)", "nvfp4 (s2026)"]
    for line, ap in zip(lines, table["test_auprc"], strict=True):
        x, y = line.get_xdata(), line.get_ydata()
        area = -np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)  # trapezoids of the drawn polyline
        assert area == pytest.approx(ap, abs=1e-12)


def test_one_colour_per_recipe_in_every_figure(sweep_store):
    swept, result = load(sweep_store, sweep_store.complete)
    axes = figures.grid_axes(swept.table, swept.plan)
    fig4 = figures.fig4_auprc_vs_scale(result, axes)
    fig5 = figures.fig5_curves(swept.table, swept.curves, axes)
    fig6 = figures.fig6_normalized(result, axes, swept.plan)
    fig7 = figures.fig7_kfold(result)
    ids = {"baseline": 0, "nvfp4": 1, "2d_rht_sr": 5}  # paper ids (conftest's RECIPES)
    expected = {r: figures.recipe_color(r, rid) for r, rid in ids.items()}
    seen = {}
    for line in fig4.axes[0].get_lines() + fig5.axes[0].get_lines():
        if not line.get_label().startswith("_"):  # error bar caps carry no label
            seen.setdefault(line.get_label().split(" ")[0], set()).add(line.get_color())
    for recipe, colors in seen.items():
        assert colors == {expected[recipe]}, recipe
    assert set(seen) == {"baseline", "nvfp4", "2d_rht_sr"}
    # Fig 6 and Fig 7 dots: facecolors in recipe order.
    for fig in (fig6, fig7):
        dots = [c for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]
        colors = {tuple(np.round(fc, 6)) for c in dots for fc in c.get_facecolors()[:, :3]}
        allowed = {tuple(np.round(c[:3], 6)) for c in expected.values()}
        assert colors and colors <= allowed


def test_fig6_is_laid_out_as_in_the_paper(sweep_store):
    swept, result = load(sweep_store, sweep_store.complete)
    fig = figures.fig6_normalized(result, figures.grid_axes(swept.table, swept.plan), swept.plan)
    ax = fig.axes[0]
    bottom_left = fig.axes[2]  # shared x: the bottom row carries the recipe names
    assert [t.get_text() for t in bottom_left.get_xticklabels()] == ["nvfp4", "2d_rht_sr"]
    assert [a.get_ylabel() for a in fig.axes] == [
        "% of BF16 baseline",
        "",
        "% of BF16 baseline",
        "",
    ]
    # 2d_rht_sr (2D weight tiles, RHT, SR) is shaded; nvfp4 is not.
    spans = [p for p in ax.patches if p.get_facecolor()[:3] == pytest.approx((0.9, 0.9, 0.9))]
    assert [(p.get_x(), p.get_x() + p.get_width()) for p in spans] == [(0.5, 1.5)]
    assert figures.fancy_scaling("sr_only") and figures.fancy_scaling("fwd_rht")
    assert not figures.fancy_scaling("chain_rule") and not figures.fancy_scaling("no_such")


def _assert_texts_inside(fig):
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    box = fig.bbox
    titles = [fig._suptitle] + [ax.title for ax in fig.axes]
    for text in titles:
        if text is None or not text.get_text():
            continue
        extent = text.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, text.get_text()
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1, text.get_text()
    # Panel titles do not run into each other.
    extents = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.title.get_text()]
    for i, a in enumerate(extents):
        assert not any(a.overlaps(b) for b in extents[i + 1 :])


@pytest.mark.parametrize("name", ["complete", "incomplete"])
def test_titles_are_never_clipped(sweep_store, name):
    swept, result = load(sweep_store, getattr(sweep_store, name))
    axes = figures.grid_axes(swept.table, swept.plan)
    for fig in (
        figures.fig4_auprc_vs_scale(result, axes),
        figures.fig5_curves(swept.table, swept.curves, axes),
        figures.fig6_normalized(result, axes, swept.plan),
        figures.fig7_kfold(result),
    ):
        if fig is not None:
            _assert_texts_inside(fig)


def test_a_single_panel_keeps_its_long_titles_inside():
    table = single(recipes=("baseline", "nvfp4"))
    table["arch"] = "a_custom_architecture_with_a_long_name"
    table["scale"] = "a_custom_scale_name"
    result = analyze_table(table, None, n_boot=50)
    axes = figures.grid_axes(table)
    plan = [dict(r, seed=s) for r in table.to_dict("records") for s in (2026, 2027, 2028)]
    for fig in (
        figures.fig4_auprc_vs_scale(result, axes),
        figures.fig6_normalized(result, axes, plan),
    ):
        _assert_texts_inside(fig)
