"""The paper's figures from a sweep's analysis, as PNG and PDF.

- Fig 4: AUPRC vs scale, one panel per architecture, mean +- 95% t-CI per recipe (each recipe
  offset a little sideways, so intervals at one scale do not hide each other).
- Fig 5: PR curves and prediction histograms at the smallest scale present, one run per
  (arch, recipe) (the lowest seed): attention discretization shows as staircase PR curves and
  spiky histograms. A PR curve is drawn as the step function whose area is the run's AP:
  precision P_i over recall (R_{i+1}, R_i] (trainables.metrics.pr_curve_points), never the
  lower-recall precision held across a step.
- Fig 6 (the paper's layout): normalized AUPRC, "% of BF16 baseline" (100 = the same-seed
  baseline), one dot per seed and mean +- 95% CI per recipe in paper order; architectures as rows
  (Swin, CNN, then the ViTs), scales as columns; the recipes with stochastic rounding, the RHT or
  2D (16x16) weight scaling shaded.
- Fig 7: k-fold cross-validation, one dot per fold and mean +- SD (the paper reports SD for the
  folds), arch x recipe groups per scale; drawn only when the sweep has folds f0...

One colour per recipe in every figure: the paper's recipes take tab10's colour of their paper id
(0-7), any other recipe a colour picked from its name, so a recipe looks the same in every figure
and every sweep. Titles are wrapped to their panel or figure width, never clipped.

Every figure renders for incomplete grids: a planned cell with no usable runs is drawn empty with
a note, a panel with missing runs says how many in its title, and a single seed or a single scale
draws dots without intervals instead of failing.

Figures are built on `matplotlib.figure.Figure` directly, never pyplot: no global figure state and
no GUI backend, so rendering is safe in any process (PNG goes through Agg, PDF through the pdf
backend).
"""

from __future__ import annotations

import textwrap
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, NullLocator

from sweep.analysis import BASELINE, FINISHED, Analysis, ordered
from trainables.vocabulary import ARCHS, scales

FORMATS = ("png", "pdf")
DPI = 110
PANEL = (3.4, 2.8)  # inches per panel, its labels included
MARGIN = {"left": 0.8, "right": 0.2, "top": 0.7, "bottom": 0.9}  # inches around the panels
LEGEND = 1.4  # inches to the right for a figure legend
PAPER_ARCH_ORDER = ("swin", "cnn", *ARCHS)  # the paper's Fig 6 and 7 rows first
TITLE_CHAR, SUPTITLE_CHAR = 0.075, 0.095  # inches per character at 9 pt and 11 pt, generously
SHADE = "0.9"  # background of the recipes with SR, RHT or 2D scaling (Fig 6)


# --------------------------------------------------------------------------- the grid to draw


def grid_axes(table: pd.DataFrame, plan: list[dict] | None = None) -> dict[str, list[str]]:
    """Archs, scales and recipes of the holdout grid (planned or tracked), in canonical order."""
    frames = [table[["arch", "scale", "recipe", "fold"]]]
    if plan:
        frames.append(pd.DataFrame(plan).reindex(columns=["arch", "scale", "recipe", "fold"]))
    grid = pd.concat(frames, ignore_index=True)
    holdout = grid[grid["fold"].astype(str) == "holdout"]
    ids = table.groupby("recipe")["recipe_id"].min() if not table.empty else pd.Series(dtype=float)
    recipes = sorted(
        holdout["recipe"].dropna().unique(),
        key=lambda r: (ids.get(r, 99) if not pd.isna(ids.get(r, 99)) else 99, r),
    )
    return {
        "arch": ordered(holdout["arch"], ARCHS),
        "scale": ordered(holdout["scale"], scales()),
        "recipe": [str(r) for r in recipes],
    }


def recipe_color(recipe: str, recipe_id: float | None = None) -> tuple:
    """The recipe's colour in every figure: tab10 by paper id (0-7), else one picked by name."""
    from matplotlib import colormaps

    if recipe_id is not None and not pd.isna(recipe_id) and 0 <= int(recipe_id) <= 7:
        return colormaps["tab10"](int(recipe_id))
    return colormaps["Dark2"](zlib.crc32(str(recipe).encode()) % 8)


def _colors(*frames: pd.DataFrame) -> dict[str, tuple]:
    """recipe -> colour for every recipe in `frames` (each with recipe and recipe_id columns)."""
    ids: dict[str, float] = {}
    for frame in frames:
        if frame is not None and not frame.empty and "recipe" in frame:
            ids_col = frame["recipe_id"] if "recipe_id" in frame else pd.Series(np.nan, frame.index)
            for recipe, rid in zip(frame["recipe"], ids_col, strict=True):
                if recipe not in ids or pd.isna(ids[recipe]):
                    ids[recipe] = rid
    return {r: recipe_color(r, rid) for r, rid in ids.items()}


def _note(ax: Axes, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=8,
        color="0.4",
    )


def _panels(
    rows: int,
    cols: int,
    title: str,
    legend: bool = False,
    sharey: bool | str = False,
    sharex: bool | str = False,
    panel_width: float = PANEL[0],
) -> tuple[Figure, np.ndarray]:
    # Fixed margins in inches instead of constrained layout, and titles at a fixed height:
    # measuring every tick label to place things costs more than drawing them, and is done again
    # for each format (PNG, PDF). Shared axes also hide the inner panels' tick labels.
    rows, cols = max(rows, 1), max(cols, 1)
    width = panel_width * cols + MARGIN["left"] + MARGIN["right"] + (LEGEND if legend else 0)
    title = _wrap(title, width - 0.2, SUPTITLE_CHAR)
    top = MARGIN["top"] + 0.2 * title.count("\n")  # inches; more for a two-line title
    height = PANEL[1] * rows + top + MARGIN["bottom"]
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=MARGIN["left"] / width,
        right=1 - (MARGIN["right"] + (LEGEND if legend else 0)) / width,
        bottom=MARGIN["bottom"] / height,
        top=1 - top / height,
        wspace=0.35,
        hspace=0.3 if sharex else 0.75,  # room for the inner x labels only when they are drawn
    )
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey, sharex=sharex)
    fig.suptitle(title, fontsize=11)
    return fig, axes


def _wrap(text: str, inches: float, char: float) -> str:
    """`text` broken into lines that fit `inches` at `char` inches per character."""
    width = max(int(inches / char), 8)
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _title(ax: Axes, text: str) -> None:
    # Wrapped to the panel's width (never clipped or run into the next panel), at an explicit y,
    # which skips matplotlib's auto-placement.
    inches = ax.get_position().width * ax.figure.get_figwidth()
    ax.set_title(_wrap(text, inches, TITLE_CHAR), fontsize=9, y=1.01)


def _label(metric: str) -> str:
    split, _, name = metric.partition("_")
    return f"{split} {name.upper()}"


# --------------------------------------------------------------------------- Fig 4


def fig4_auprc_vs_scale(analysis: Analysis, axes: dict[str, list[str]]) -> Figure:
    """Mean +- 95% t-CI of the metric vs scale, one line per recipe, one panel per arch."""
    summary = analysis.summary[analysis.summary["split"] == "holdout"]
    archs, scales, recipes = axes["arch"], axes["scale"], axes["recipe"]
    colors = _colors(summary)
    fig, panels = _panels(
        1, len(archs), f"Fig 4: {_label(analysis.metric)} vs scale", legend=True, sharey=True
    )
    x_of = {s: i for i, s in enumerate(scales)}
    for ax, arch in zip(panels[0], archs or [None], strict=False):
        _title(ax, arch or "no runs")
        cells = summary[summary["arch"] == arch]
        for k, recipe in enumerate(recipes):
            rows = cells[cells["recipe"] == recipe].sort_values("scale", key=lambda s: s.map(x_of))
            if rows.empty:
                continue
            err = np.vstack([rows["mean"] - rows["ci95_lo"], rows["ci95_hi"] - rows["mean"]])
            # A small sideways offset per recipe, so intervals at one scale do not hide each other.
            dodge = 0.3 * (k / max(len(recipes) - 1, 1) - 0.5) if len(recipes) > 1 else 0.0
            ax.errorbar(
                rows["scale"].map(x_of) + dodge,
                rows["mean"],
                yerr=np.nan_to_num(err),
                marker="o",
                ms=3,
                capsize=2,
                lw=1,
                color=colors[recipe],
                label=recipe,
            )
        missing = len(scales) * len(recipes) - len(cells)
        if cells.empty:
            _note(ax, "no finished runs")
        elif missing > 0:  # in the title, where it cannot hide a data point
            _title(ax, f"{arch} ({missing} cell(s) without runs)")
        ax.set_xticks(range(len(scales)), scales)
        ax.set_xlim(-0.5, max(len(scales) - 0.5, 0.5))
        ax.set_xlabel("scale")
    panels[0, 0].set_ylabel(f"{_label(analysis.metric)} (mean ± 95% CI)")
    handles, labels = panels[0, 0].get_legend_handles_labels()
    for ax in panels[0, 1:]:
        h, lab = ax.get_legend_handles_labels()
        handles += [x for x, y in zip(h, lab, strict=True) if y not in labels]
        labels += [y for y in lab if y not in labels]
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=7)
    return fig


# --------------------------------------------------------------------------- Fig 5


def fig5_trials(table: pd.DataFrame) -> list[str]:
    """The runs Fig 5 draws: at the smallest holdout scale with finished runs, the lowest seed of
    each (arch, recipe)."""
    done = table[(table["status"] == FINISHED) & (table["fold"] == "holdout")]
    if done.empty:
        return []
    smallest = ordered(done["scale"], scales())[0]
    cell = done[done["scale"] == smallest].sort_values(["arch", "recipe", "seed"])
    return cell.drop_duplicates(["arch", "recipe"])["trial_key"].tolist()


def fig5_curves(table: pd.DataFrame, curves: dict[str, dict], axes: dict[str, list[str]]) -> Figure:
    """PR curves (left) and prediction histograms (right) per arch at the smallest scale."""
    rows = table[table["trial_key"].isin(set(curves))].sort_values(["recipe_id", "seed"])
    archs = ordered(rows["arch"], ARCHS)
    scale = ordered(rows["scale"], scales())[0] if not rows.empty else "?"
    fig, panels = _panels(
        len(archs), 2, f"Fig 5: PR curves and prediction histograms at {scale}", sharex="col"
    )
    if not archs:
        for ax in panels[0]:
            _note(ax, "no pr_curve.json / pred_hist.json artifacts")
        return fig
    colors = _colors(rows)
    for (pr_ax, hist_ax), arch in zip(panels, archs, strict=True):
        drawn_pr = drawn_hist = False
        for _, run in rows[rows["arch"] == arch].iterrows():
            color = colors.get(run["recipe"], "k")
            label = f"{run['recipe']} (s{run['seed']})"
            drawn_pr |= _draw_pr(pr_ax, curves[run["trial_key"]].get("pr_curve"), color, label)
            drawn_hist |= _draw_hist(
                hist_ax, curves[run["trial_key"]].get("pred_hist"), color, label
            )
        pr_ax.set(ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        hist_ax.set(ylabel="pixels")
        _title(pr_ax, f"{arch}: PR curve")
        _title(hist_ax, f"{arch}: test predictions")
        if not drawn_pr:
            _note(pr_ax, "no pr_curve.json")
        if drawn_hist:
            hist_ax.set_yscale("log")
            hist_ax.yaxis.set_minor_locator(NullLocator())
            hist_ax.yaxis.set_major_formatter(LogFormatter())  # plain text: no mathtext parsing
        else:
            _note(hist_ax, "no pred_hist.json")
        if drawn_pr:
            pr_ax.legend(fontsize=6, loc="lower left")
    panels[-1, 0].set_xlabel("recall")
    panels[-1, 1].set_xlabel("sigmoid probability")
    return fig


def pr_staircase(recall: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the PR step function: with the points ordered by recall, decreasing, P_i holds
    over (R_{i+1}, R_i] (trainables.metrics.pr_curve_points), so the area under the polyline is
    sum_i (R_i - R_{i+1}) P_i = AP. Vertical segments add no area."""
    order = np.argsort(-recall, kind="stable")
    recall, precision = recall[order], precision[order]
    xs = np.repeat(recall, 2)[1:]  # R0, R1, R1, R2, R2, ...
    ys = np.repeat(precision, 2)[:-1]  # P0, P0, P1, P1, ...
    return xs, ys


def _draw_pr(ax: Axes, pr: dict | None, color, label: str) -> bool:
    recall, precision = _arrays(pr, "recall", "precision")
    if recall.size == 0 or recall.size != precision.size:
        return False
    ax.plot(*pr_staircase(recall, precision), color=color, lw=1, label=label)
    return True


def _draw_hist(ax: Axes, hist: dict | None, color, label: str) -> bool:
    edges, counts = _arrays(hist, "bin_edges", "counts")
    if counts.size == 0 or edges.size != counts.size + 1:
        return False
    ax.stairs(np.maximum(counts, 0.5), edges, color=color, lw=1, label=label)  # 0.5: log-safe
    return True


def _arrays(artifact: dict | None, *keys: str) -> list[np.ndarray]:
    """The named float arrays of a logged artifact; empty ones where it is missing or malformed
    (a run without the artifact is drawn without that curve)."""
    try:
        return [np.asarray(artifact[key], dtype=float) for key in keys]
    except (TypeError, KeyError, ValueError):
        return [np.empty(0) for _ in keys]


# --------------------------------------------------------------------------- Fig 6


def fig6_normalized(
    analysis: Analysis, axes: dict[str, list[str]], plan: list[dict] | None = None
) -> Figure:
    """Normalized metric per recipe (paper order): a dot per seed, mean +- 95% CI; rows arch
    (Swin, CNN, ...), columns scale; the recipes with SR, RHT or 2D scaling shaded."""
    values = analysis.norm.values
    values = values[(values["split"] == "holdout") & values["normalized"].notna()]
    summary = analysis.summary[analysis.summary["split"] == "holdout"]
    archs = ordered(axes["arch"], PAPER_ARCH_ORDER)
    scales = axes["scale"]
    recipes = [r for r in axes["recipe"] if r != BASELINE]
    colors = _colors(values, summary)
    planned = pd.DataFrame(plan) if plan else None
    title = (
        f"Fig 6: normalized {_label(analysis.metric)}, % of the same-seed BF16 baseline\n"
        "dots: seeds; bars: mean ± 95% CI; shaded: SR, RHT or 2D scaling"
    )
    fig, panels = _panels(len(archs), len(scales), title, sharey="row", sharex=True)
    shaded = [i for i, r in enumerate(recipes) if fancy_scaling(r)]
    for i, arch in enumerate(archs or [None]):
        for j, scale in enumerate(scales or [None]):
            ax = panels[i, j]
            cell = values[
                (values["arch"] == arch)
                & (values["scale"] == scale)
                & (values["recipe"] != BASELINE)
            ]
            stats_ = summary[(summary["arch"] == arch) & (summary["scale"] == scale)]
            _draw_normalized_cell(ax, cell, stats_, recipes, colors, shaded)
            _title(ax, f"{arch} / {scale}{_shortfall(planned, arch, scale, len(cell))}")
            if cell.empty:
                _note(ax, "no normalized runs\n(missing runs or baseline)")
    for ax in panels[:, 0]:
        ax.set_ylabel("% of BF16 baseline")
    return fig


def fancy_scaling(recipe: str) -> bool:
    """Whether a registered recipe uses stochastic rounding, the RHT or 2D (16x16) scaling on
    any operand (False for a recipe this process does not know)."""
    from quant.recipes import SLOTS, get_recipe  # imports torch: only when Fig 6 is drawn

    try:
        recipe_ = get_recipe(recipe)
    except ValueError:
        return False
    operands = [recipe_.operand(gemm, role) for gemm, role in SLOTS]
    return any(op.stochastic or op.rht or op.block == (16, 16) for op in operands)


def _shortfall(planned: pd.DataFrame | None, arch: str, scale: str, have: int) -> str:
    """' (k of n planned missing)' for a panel title, '' when complete or without a plan."""
    if planned is None:
        return ""
    expected = int(
        (
            (planned["arch"] == arch)
            & (planned["scale"] == scale)
            & (planned["fold"] == "holdout")
            & (planned["recipe"] != BASELINE)
        ).sum()
    )
    return f" ({expected - have} of {expected} planned missing)" if have < expected else ""


def _draw_normalized_cell(
    ax: Axes,
    cell: pd.DataFrame,
    stats_: pd.DataFrame,
    recipes: list[str],
    colors: dict,
    shaded: list[int],
) -> None:
    # One scatter and one errorbar call per panel (not per recipe): artists dominate the cost.
    for x in shaded:
        ax.axvspan(x - 0.5, x + 0.5, color=SHADE, lw=0, zorder=0)
    ax.axhline(100, color="0.6", lw=0.8, ls="--")
    x_of = {r: i for i, r in enumerate(recipes)}
    dots = cell[cell["recipe"].isin(x_of)]
    if not dots.empty:
        rank = dots.groupby("recipe").cumcount().to_numpy()
        size = dots.groupby("recipe")["recipe"].transform("size").to_numpy()
        jitter = np.where(size > 1, -0.15 + 0.3 * rank / np.maximum(size - 1, 1), 0.0)
        ax.scatter(
            dots["recipe"].map(x_of) + jitter,
            dots["normalized"],
            s=8,
            lw=0,
            alpha=0.6,
            c=[colors.get(r, "k") for r in dots["recipe"]],
        )
    bars = stats_[stats_["recipe"].isin(x_of) & (stats_["norm_n"] > 0)]
    if not bars.empty:
        mean = bars["norm_mean"].to_numpy(float)
        err = np.vstack(
            [
                mean - bars["norm_ci95_lo"].to_numpy(float),
                bars["norm_ci95_hi"].to_numpy(float) - mean,
            ]
        )
        ax.errorbar(
            bars["recipe"].map(x_of) + 0.3,
            mean,
            yerr=np.nan_to_num(err),
            fmt="o",
            ms=4,
            capsize=3,
            color="k",
            lw=1,
        )
    ax.set_xticks(range(len(recipes)), recipes, rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.6, max(len(recipes) - 0.4, 0.6))
    ax.margins(y=0.15)  # keep edge dots off the frame


# --------------------------------------------------------------------------- Fig 7


def fig7_kfold(analysis: Analysis) -> Figure | None:
    """Per-fold dots and mean +- SD per (arch, recipe), a panel per scale; None without folds."""
    values = analysis.norm.values
    folds = values[values["split"] == "kfold"]
    if folds.empty:
        return None
    scale_list = ordered(folds["scale"], scales())
    archs = ordered(folds["arch"], PAPER_ARCH_ORDER)
    recipes = sorted(
        folds["recipe"].unique(),
        key=lambda r: (folds.loc[folds["recipe"] == r, "recipe_id"].min(), r),
    )
    colors = _colors(folds)
    groups = [(a, r) for a in archs for r in recipes]
    fig, panels = _panels(
        1,
        len(scale_list),
        f"Fig 7: {len(folds['fold'].unique())}-fold CV, "
        f"{_label(analysis.metric)}\n(dots: folds; bars: mean ± SD)",
        sharey=True,
        panel_width=max(PANEL[0], 0.9 * len(groups)),
    )
    for ax, scale in zip(panels[0], scale_list, strict=True):
        for x, (arch, recipe) in enumerate(groups):
            v = folds.loc[
                (folds["scale"] == scale) & (folds["arch"] == arch) & (folds["recipe"] == recipe),
                "value",
            ].to_numpy()
            if v.size == 0:
                ax.text(
                    x,
                    0.5,
                    "n/a",
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    fontsize=7,
                    color="0.4",
                )
                continue
            ax.scatter(np.full(v.size, x - 0.12), v, s=10, color=colors[recipe], alpha=0.7, lw=0)
            sd = v.std(ddof=1) if v.size > 1 else 0.0
            ax.errorbar(
                [x + 0.12], [v.mean()], yerr=[sd], fmt="o", ms=4, capsize=3, color="k", lw=1
            )
        ax.set_xticks(range(len(groups)), [f"{a}\n{r}" for a, r in groups], fontsize=7)
        _title(ax, scale)
    panels[0, 0].set_ylabel(_label(analysis.metric))
    return fig


# --------------------------------------------------------------------------- saving


def save_figure(
    fig: Figure, folder: Path, stem: str, formats: tuple[str, ...] = FORMATS
) -> list[Path]:
    """`folder/stem.png` and `folder/stem.pdf` (or the given formats)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.{ext}" for ext in formats]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    return paths


def render_figures(
    analysis: Analysis,
    table: pd.DataFrame,
    curves: dict[str, dict],
    plan: list[dict] | None,
    folder: Path,
    formats: tuple[str, ...] = FORMATS,
) -> list[Path]:
    """Draw and save every figure that has data to show; returns the written files."""
    axes = grid_axes(table, plan)
    figures = {
        "fig4_auprc_vs_scale": fig4_auprc_vs_scale(analysis, axes),
        "fig5_pr_curves_histograms": fig5_curves(table, curves, axes),
        "fig6_normalized_auprc": fig6_normalized(analysis, axes, plan),
        "fig7_kfold": fig7_kfold(analysis),
    }
    paths = []
    for stem, fig in figures.items():
        if fig is not None:
            paths += save_figure(fig, Path(folder), stem, formats)
    return paths
