"""Statistics of a sweep: normalized AUPRC, confidence intervals, paired tests, rank stability.

Input is the tidy runs table of `sweep.runs` (one row per trial: tags as columns, final metrics as
columns, `status`). Everything here is pure pandas/numpy/scipy on that table, so the analysis can be
re-run offline from a snapshot and tested on small hand-made tables.

The protocol (docs/study.md, "Evaluation and analysis"):

- Which runs count. Only FINISHED runs with a value of the chosen metric (test AUPRC by default).
  Failed, killed, running and missing trials are *listed* (`completeness`), never filled in: a
  zero-filled AUPRC would drag every mean down and look like a real collapse.

- Normalized AUPRC. For a run of recipe r at (arch, scale, seed, fold)::

      normalized = 100 * AUPRC(r) / AUPRC(baseline at the same arch, scale, seed, fold)

  Same seed means same initial weights, data order and dropout streams, so the ratio removes the
  seed-to-seed level and leaves the effect of the recipe. A run whose baseline is missing (or is 0)
  has no normalized value: it is excluded from normalized statistics and listed with the reason.

- Per (split, arch, scale, recipe): n, mean, SD (ddof 1) and the 95% t interval
  ``mean +- t(0.975, n-1) * SD / sqrt(n)``, plus a seeded percentile bootstrap interval of the mean
  (resample the n values with replacement B times, take the 2.5% and 97.5% quantiles of the B
  means), which does not assume normality; with n = 10 seeds the two should roughly agree.

- Per (split, arch, scale), for every recipe pair (A, B), paired over the (seed, fold) blocks both
  have: the Wilcoxon signed-rank test (two-sided; zero differences dropped, as Wilcoxon did) on
  d = B - A, Holm's step-down correction over the pairs of the group, and the paired Cohen's d =
  mean(d) / SD(d). Degenerate cases (fewer than 2 pairs, all differences zero, zero SD) give NaN and
  say why in `note`, instead of raising or inventing a p-value.

- Rank stability: Kendall's coefficient of concordance W over seeds. Each (seed, fold) block ranks
  the recipes (average ranks for ties); with m blocks, n recipes, R_j the rank sum of recipe j::

      S = sum_j (R_j - m (n + 1) / 2)^2
      W = 12 S / (m^2 (n^3 - n) - m sum_blocks sum_ties (t^3 - t))

  W = 1: every seed orders the recipes the same way; W = 0: no agreement. m (n - 1) W is Friedman's
  chi-square (tie-corrected), which gives the p-value of "no agreement".

- Swin vs CNN per (split, scale, recipe): the Mann-Whitney U test (two-sided) on the metric. The two
  architectures share seeds but not weights, so the samples are treated as independent; the test's
  name is a column of the output.

- Attention-discretization diagnostics (not in the paper): when softmax attention collapses to a few
  discrete patterns the model emits only a handful of probability values: the PR curve becomes a
  staircase and the prediction histogram a comb of isolated spikes. Two per-run signals, each with a
  documented threshold: `hist_spikiness` (trainables.histogram.histogram_spikiness, the one measure
  the training loop logs as `*_hist_spikiness` too) and `DISTINCT_VALUES_THRESHOLD`.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from trainables.vocabulary import ARCHS, scales

BASELINE = "baseline"
METRICS = ("test_auprc", "val_auprc")
FINISHED = "FINISHED"
BLOCK = ["seed", "fold"]  # the unit of pairing: same seed (weights, data order) and same fold
GROUP = ["split", "arch", "scale"]  # recipes are compared within one of these
CELL = [*GROUP, "recipe"]  # one summary row

# A run is flagged as discretized when more than half of its interior prediction mass sits in
# isolated histogram spikes, or when it emits fewer distinct (float32) probabilities than this. A
# continuous model scoring ~10^5-10^7 pixels produces ~10^5-10^7 distinct values; a model whose
# attention snapped to a few patterns produces a few dozen.
SPIKINESS_THRESHOLD = 0.5
DISTINCT_VALUES_THRESHOLD = 256


# --------------------------------------------------------------------------- ordering helpers


def split_of(fold: str) -> str:
    """`holdout` for the fixed split, `kfold` for the cross-validation folds (f0, f1, ...)."""
    return "holdout" if str(fold) == "holdout" else "kfold"


def ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
    """Distinct values in the canonical `order`, unknown values after them, alphabetically."""
    present = {str(v) for v in values if not pd.isna(v)}
    known = [v for v in dict.fromkeys(order) if v in present]
    return known + sorted(present - set(order))


def recipe_order(table: pd.DataFrame) -> list[str]:
    """Recipes by paper id (`recipe_id`), the baseline (id 0) first."""
    if table.empty:
        return []
    ids = table.groupby("recipe")["recipe_id"].min()
    return sorted(ids.index, key=lambda r: (ids[r] if not pd.isna(ids[r]) else 99, r))


# ---------------------------------------------------------------- usable values, normalization


@dataclass(frozen=True)
class Normalization:
    """`values`: one row per usable run with `value` (the metric) and `normalized` (NaN when
    excluded); `excluded`: the usable runs without a normalized value and why."""

    metric: str
    values: pd.DataFrame
    excluded: pd.DataFrame


def usable_values(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """FINISHED runs with a value of `metric`, as `value`, plus the `split` column."""
    if metric not in METRICS and metric not in table.columns:
        raise ValueError(f"metric {metric!r} is not a column of the runs table; valid: {METRICS}")
    metric_col = table[metric] if metric in table.columns else pd.Series(np.nan, table.index)
    keep = (table["status"] == FINISHED) & metric_col.notna()
    out = table.loc[keep, ["trial_key", "run_id", "arch", "scale", "recipe", "recipe_id", *BLOCK]]
    out = out.assign(value=metric_col[keep].astype(float))
    out.insert(0, "split", out["fold"].map(split_of))
    return out.reset_index(drop=True)


def normalize(
    table: pd.DataFrame, metric: str = "test_auprc", baseline: str = BASELINE
) -> Normalization:
    """Each usable run's metric / the same (arch, scale, seed, fold) baseline's metric x 100."""
    values = usable_values(table, metric)
    key = ["arch", "scale", *BLOCK]
    base = values.loc[values["recipe"] == baseline, [*key, "value"]]
    base = base.rename(columns={"value": "baseline_value"}).drop_duplicates(key)
    values = values.merge(base, on=key, how="left")
    ok = values["baseline_value"].notna() & (values["baseline_value"] != 0)
    values["normalized"] = np.where(ok, 100.0 * values["value"] / values["baseline_value"], np.nan)
    # A finished baseline without the metric is not the same problem as no finished baseline.
    finished = table.loc[(table["status"] == FINISHED) & (table["recipe"] == baseline), key]
    finished = finished.astype(str).drop_duplicates().assign(_finished=True)
    found = values[key].astype(str).merge(finished, on=key, how="left")["_finished"]
    reason = np.select(
        [values["baseline_value"].notna(), found.notna().to_numpy()],
        [f"{baseline} {metric} is 0", f"{baseline} finished without {metric}"],
        f"no finished {baseline} run at this arch/scale/seed/fold",
    )
    excluded = values.loc[~ok, ["trial_key", "arch", "scale", "recipe", *BLOCK]]
    excluded = excluded.assign(reason=reason[~ok.to_numpy()])
    return Normalization(metric, values, excluded.reset_index(drop=True))


# --------------------------------------------------------------------------- intervals


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """mean +- t((1 + level) / 2, n - 1) * SD / sqrt(n); NaN for n < 2."""
    v = np.asarray(values, dtype=float)
    n = v.size
    if n < 2:
        return math.nan, math.nan
    half = stats.t.ppf((1 + level) / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean() - half), float(v.mean() + half)


def bootstrap_interval(
    values: Sequence[float],
    *,
    level: float = 0.95,
    n_boot: int = 10_000,
    seed: int | Sequence[int] = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, reproducible for a given `seed`; NaN for n < 2."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


STAT_KEYS = ("n", "mean", "sd", "ci95_lo", "ci95_hi", "boot_lo", "boot_hi")


def describe(
    values: Sequence[float], *, n_boot: int = 10_000, seed: int | Sequence[int] = 0
) -> dict:
    """n, mean, SD, 95% t interval and 95% bootstrap interval of `values`."""
    v = np.asarray(values, dtype=float)
    n = v.size
    t_lo, t_hi = t_interval(v)
    b_lo, b_hi = bootstrap_interval(v, n_boot=n_boot, seed=seed)
    return {
        "n": n,
        "mean": float(v.mean()) if n else math.nan,
        "sd": float(v.std(ddof=1)) if n > 1 else math.nan,
        "ci95_lo": t_lo,
        "ci95_hi": t_hi,
        "boot_lo": b_lo,
        "boot_hi": b_hi,
    }


def _cell_seed(seed: int, key: tuple) -> list[int]:
    # One stream per cell, derived from its name: a cell's interval does not depend on which other
    # cells exist or in what order they are computed.
    return [seed, zlib.crc32("/".join(map(str, key)).encode())]


def summarize(values: pd.DataFrame, *, n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Per (split, arch, scale, recipe): stats of the metric and (`norm_` columns) of the
    normalized metric, over the runs that have one."""
    raw = values["value"].to_numpy(float)
    norm = values["normalized"].to_numpy(float)
    groups = values.groupby(CELL, sort=False)
    recipe_ids = groups["recipe_id"].min()
    rows = []
    for key, idx in groups.indices.items():
        cell_seed = _cell_seed(seed, key)
        n = norm[idx]
        rows.append(
            {
                **dict(zip(CELL, key, strict=True)),
                "recipe_id": recipe_ids[key],
                **describe(raw[idx], n_boot=n_boot, seed=cell_seed),
                **{
                    f"norm_{k}": v
                    for k, v in describe(n[~np.isnan(n)], n_boot=n_boot, seed=cell_seed).items()
                },
            }
        )
    columns = [*CELL, "recipe_id", *STAT_KEYS, *(f"norm_{k}" for k in STAT_KEYS)]
    return _sort_cells(pd.DataFrame(rows, columns=columns))


def _sort_cells(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df.reset_index(drop=True)
    keys = {
        "arch": lambda s: s.map({a: i for i, a in enumerate(ARCHS)}).fillna(99),
        "scale": lambda s: s.map({a: i for i, a in enumerate(scales())}).fillna(99),
    }
    by = [
        c
        for c in ["split", "scale", "arch", "recipe_id", "recipe_a_id", "recipe_b_id"]
        if c in df.columns
    ]
    return df.sort_values(
        by, key=lambda s: keys[s.name](s) if s.name in keys else s, kind="stable"
    ).reset_index(drop=True)


# --------------------------------------------------------------------------- paired tests


def wilcoxon_signed_rank(diffs: Sequence[float]) -> tuple[float, float, str]:
    """(statistic, two-sided p, note). Zero differences are dropped (Wilcoxon's convention); fewer
    than two pairs or no non-zero difference give NaN with the reason in `note`."""
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    if d.size < 2:
        return math.nan, math.nan, f"only {d.size} paired seed(s)"
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return math.nan, math.nan, "all paired differences are zero"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about exactness with ties/small n
        res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    note = f"{d.size - nonzero} zero difference(s) dropped" if nonzero < d.size else ""
    return float(res.statistic), float(res.pvalue), note


def paired_cohens_d(diffs: Sequence[float]) -> tuple[float, str]:
    """mean(d) / SD(d) (ddof 1): the paired effect size in units of the seed-to-seed spread."""
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    if d.size < 2:
        return math.nan, f"only {d.size} paired seed(s)"
    sd = d.std(ddof=1)
    if sd <= 1e-9 * np.abs(d).max():  # equal differences, up to float rounding of B - A
        return math.nan, "paired differences have zero SD"
    return float(d.mean() / sd), ""


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and do not count as tests.

    Sort the m valid p-values ascending, p_(1) <= ... <= p_(m); the adjusted value of p_(i) is
    max_{j <= i} min(1, (m - j + 1) p_(j)) (the running max keeps the order of the raw p-values).
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def _block_matrix(group: pd.DataFrame, value: str, recipes: list[str]) -> np.ndarray:
    """(seed, fold) blocks x `recipes` matrix of `value`, NaN where a block lacks a recipe.
    Plain numpy: the tests below run per recipe pair, and pandas indexing per pair costs more
    than the tests themselves."""
    blocks = group["seed"].astype(str) + "/" + group["fold"].astype(str)
    rows, uniques = pd.factorize(blocks)
    cols = group["recipe"].map({r: i for i, r in enumerate(recipes)}).to_numpy()
    matrix = np.full((len(uniques), len(recipes)), np.nan)
    matrix[rows, cols] = group[value].to_numpy(float)
    return matrix


def pairwise_tests(values: pd.DataFrame, value: str = "value") -> pd.DataFrame:
    """Every recipe pair within each (split, arch, scale), paired over common (seed, fold) blocks.

    `diff_mean` and `cohens_d` are of d = recipe_b - recipe_a (recipe_a has the lower paper id).
    """
    rows = []
    for key, group in values.groupby(GROUP, sort=False):
        recipes = recipe_order(group)
        matrix = _block_matrix(group, value, recipes)
        ids = group.groupby("recipe")["recipe_id"].min()
        start = len(rows)
        for (i, a), (j, b) in combinations(enumerate(recipes), 2):
            both = ~np.isnan(matrix[:, i]) & ~np.isnan(matrix[:, j])
            d = matrix[both, j] - matrix[both, i]
            stat, p, w_note = wilcoxon_signed_rank(d)
            cohen, d_note = paired_cohens_d(d)
            rows.append(
                {
                    **dict(zip(GROUP, key, strict=True)),
                    "recipe_a": a,
                    "recipe_b": b,
                    "recipe_a_id": ids[a],
                    "recipe_b_id": ids[b],
                    "n_pairs": int(d.size),
                    "diff_mean": float(d.mean()) if d.size else math.nan,
                    "wilcoxon_stat": stat,
                    "p_value": p,
                    "cohens_d": cohen,
                    "note": "; ".join(dict.fromkeys(n for n in (w_note, d_note) if n)),
                }
            )
        group_p = [r["p_value"] for r in rows[start:]]
        for row, adj in zip(rows[start:], holm(group_p), strict=True):
            row["p_holm"] = float(adj)
    columns = [
        *GROUP,
        "recipe_a",
        "recipe_b",
        "recipe_a_id",
        "recipe_b_id",
        "n_pairs",
        "diff_mean",
        "wilcoxon_stat",
        "p_value",
        "p_holm",
        "cohens_d",
        "note",
    ]
    return _sort_cells(pd.DataFrame(rows, columns=columns))


# --------------------------------------------------------------------------- rank stability


def kendalls_w(scores: np.ndarray) -> float:
    """Kendall's W of an (m blocks x n items) score matrix, ties given average ranks and corrected
    for; NaN when it is undefined (m < 2, n < 2, or every block ties every item)."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[0] < 2 or scores.shape[1] < 2:
        return math.nan
    m, n = scores.shape
    ranks = np.vstack([stats.rankdata(row) for row in scores])  # average ranks for ties
    rank_sums = ranks.sum(axis=0)
    s = float(((rank_sums - m * (n + 1) / 2) ** 2).sum())
    ties = 0.0
    for row in scores:
        _, counts = np.unique(row, return_counts=True)
        ties += float((counts**3 - counts).sum())
    denominator = m**2 * (n**3 - n) - m * ties
    return 12 * s / denominator if denominator > 0 else math.nan


def rank_stability(values: pd.DataFrame, value: str = "value") -> pd.DataFrame:
    """Kendall's W of the recipe ranking over the complete (seed, fold) blocks of each group,
    with Friedman's chi-square m (n - 1) W and its p-value."""
    rows = []
    for key, group in values.groupby(GROUP, sort=False):
        recipes = recipe_order(group)
        blocks = _block_matrix(group, value, recipes)
        complete = blocks[~np.isnan(blocks).any(axis=1)]
        m, n = complete.shape
        note = f"{len(blocks) - m} incomplete seed(s) dropped" if m < len(blocks) else ""
        w = kendalls_w(complete)
        if math.isnan(w):
            note = "; ".join(
                filter(
                    None,
                    [note, f"undefined with {m} complete seed(s) x {n} recipe(s) (or all tied)"],
                )
            )
            chi2 = p = math.nan
        else:
            chi2 = m * (n - 1) * w
            p = float(stats.chi2.sf(chi2, n - 1))
        mean_rank = stats.rankdata(complete, axis=1).mean(axis=0) if m else []
        rows.append(
            {
                **dict(zip(GROUP, key, strict=True)),
                "n_seeds": m,
                "n_recipes": n,
                "kendall_w": w,
                "friedman_chi2": chi2,
                "p_value": p,
                "mean_rank": ", ".join(
                    f"{r} {v:.2f}" for r, v in zip(recipes, mean_rank, strict=False)
                ),
                "note": note,
            }
        )
    columns = [
        *GROUP,
        "n_seeds",
        "n_recipes",
        "kendall_w",
        "friedman_chi2",
        "p_value",
        "mean_rank",
        "note",
    ]
    return _sort_cells(pd.DataFrame(rows, columns=columns))


# ---------------------------------------------------------------- architecture comparison

MANN_WHITNEY = "Mann-Whitney U (two-sided)"


def compare_archs(
    values: pd.DataFrame, a: str = "swin", b: str = "cnn", value: str = "value"
) -> pd.DataFrame:
    """Arch `a` vs arch `b` per (split, scale, recipe): means, medians, Mann-Whitney U test."""
    rows = []
    both = values[values["arch"].isin([a, b])]
    for (split, scale, recipe), cell in both.groupby(["split", "scale", "recipe"], sort=False):
        xa = cell.loc[cell["arch"] == a, value].dropna().to_numpy()
        xb = cell.loc[cell["arch"] == b, value].dropna().to_numpy()
        if xa.size == 0 or xb.size == 0:
            continue  # nothing to compare; the completeness report says what is missing
        stat = p = math.nan
        note = ""
        if xa.size < 2 or xb.size < 2:
            note = f"n = {xa.size} vs {xb.size}: too few runs for a test"
        else:
            res = stats.mannwhitneyu(xa, xb, alternative="two-sided")
            stat, p = float(res.statistic), float(res.pvalue)
        rows.append(
            {
                "split": split,
                "scale": scale,
                "recipe": recipe,
                "recipe_id": cell["recipe_id"].min(),
                "arch_a": a,
                "arch_b": b,
                "n_a": xa.size,
                "n_b": xb.size,
                "mean_a": float(xa.mean()),
                "mean_b": float(xb.mean()),
                "median_a": float(np.median(xa)),
                "median_b": float(np.median(xb)),
                "test": MANN_WHITNEY,
                "statistic": stat,
                "p_value": p,
                "note": note,
            }
        )
    columns = [
        "split",
        "scale",
        "recipe",
        "recipe_id",
        "arch_a",
        "arch_b",
        "n_a",
        "n_b",
        "mean_a",
        "mean_b",
        "median_a",
        "median_b",
        "test",
        "statistic",
        "p_value",
        "note",
    ]
    return _sort_cells(pd.DataFrame(rows, columns=columns))


# --------------------------------------------------------------------------- completeness

PROBLEM_OF_STATUS = {
    "FAILED": "failed",
    "KILLED": "killed",
    "RUNNING": "running",
    "SCHEDULED": "running",
}


def completeness(table: pd.DataFrame, plan: list[dict] | None, norm: Normalization) -> pd.DataFrame:
    """Every trial that does not contribute fully, one row each with its `problem`:
    missing (planned, never tracked), failed / killed / running, no <metric> (finished without
    the metric), no baseline (excluded from normalized stats; `detail` says why: no finished
    baseline run, a baseline that finished without the metric, or a zero baseline), not in plan
    (tracked, unplanned)."""
    cols = ["trial_key", "arch", "scale", "recipe", "seed", "fold"]
    parts = []
    tracked = set(table["trial_key"])
    if plan:
        planned = pd.DataFrame(plan)
        missing = planned[~planned["trial_key"].isin(tracked)]
        parts.append(missing.reindex(columns=cols).assign(status="", problem="missing"))
        unplanned = table[~table["trial_key"].isin(set(planned["trial_key"]))]
        parts.append(unplanned[[*cols, "status"]].assign(problem="not in plan"))
    bad = table[table["status"].isin(list(PROBLEM_OF_STATUS))]
    parts.append(bad[[*cols, "status"]].assign(problem=bad["status"].map(PROBLEM_OF_STATUS)))
    finished = table[table["status"] == FINISHED]
    no_metric = finished[~finished["trial_key"].isin(set(norm.values["trial_key"]))]
    parts.append(no_metric[[*cols, "status"]].assign(problem=f"no {norm.metric}"))
    no_baseline = norm.excluded.rename(columns={"reason": "detail"})
    parts.append(no_baseline[[*cols, "detail"]].assign(status=FINISHED, problem="no baseline"))
    out = pd.concat(
        [p for p in parts if not p.empty] or [pd.DataFrame(columns=cols)], ignore_index=True
    )
    return out.reindex(columns=[*cols, "status", "problem", "detail"]).reset_index(drop=True)


def completeness_counts(
    table: pd.DataFrame, plan: list[dict] | None, issues: pd.DataFrame, norm: Normalization
) -> dict[str, int | None]:
    """Headline counts for the report."""
    problems = issues["problem"].value_counts()
    reruns = (table["n_runs"].astype(float) - 1).clip(lower=0).sum() if "n_runs" in table else 0
    return {
        "planned": len(plan) if plan else None,
        "tracked": len(table),
        "extra runs": int(reruns),  # a trial tracked more than once; its best run is used
        "finished": int((table["status"] == FINISHED).sum()),
        "usable": len(norm.values),
        "normalized": int(norm.values["normalized"].notna().sum()),
        **{
            p: int(problems.get(p, 0))
            for p in ("missing", "failed", "killed", "running", f"no {norm.metric}", "no baseline")
        },
    }


# ---------------------------------------------------------------- discretization diagnostics


def discretization(table: pd.DataFrame) -> pd.DataFrame:
    """Per run: distinct predicted values (metric `test_distinct_pred_values`), the histogram
    spikiness (`hist_spikiness`, trainables.histogram's measure of the run's pred_hist.json, the
    value the loop logs as `test_hist_spikiness`) and whether either crosses its threshold.
    Missing inputs are NaN and never flag."""
    cols = ["trial_key", "arch", "scale", "recipe", "seed", "fold", "status"]
    out = table[cols].copy()
    out["distinct_pred_values"] = _column(table, "test_distinct_pred_values")
    out["hist_spikiness"] = _column(table, "hist_spikiness")
    spiky = out["hist_spikiness"] > SPIKINESS_THRESHOLD
    few = out["distinct_pred_values"] < DISTINCT_VALUES_THRESHOLD
    out["discretized"] = spiky | few
    out["reason"] = [
        "; ".join(
            r
            for r, on in (
                (f"spikiness > {SPIKINESS_THRESHOLD}", s),
                (f"< {DISTINCT_VALUES_THRESHOLD} distinct values", f),
            )
            if on
        )
        for s, f in zip(spiky, few, strict=True)
    ]
    return out.reset_index(drop=True)


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    return table[name].astype(float) if name in table.columns else pd.Series(np.nan, table.index)


# --------------------------------------------------------------------------- everything at once


@dataclass
class Analysis:
    """All tables of one analysis; `sweep.report` writes them, `sweep.figures` draws them."""

    metric: str
    norm: Normalization
    summary: pd.DataFrame
    pairwise: pd.DataFrame
    ranks: pd.DataFrame
    arch_comparison: pd.DataFrame
    issues: pd.DataFrame
    counts: dict
    diagnostics: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def analyze_table(
    table: pd.DataFrame,
    plan: list[dict] | None = None,
    *,
    metric: str = "test_auprc",
    n_boot: int = 10_000,
    seed: int = 0,
) -> Analysis:
    """Run every statistic of the protocol on a runs table."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    norm = normalize(table, metric)
    issues = completeness(table, plan, norm)
    return Analysis(
        metric=metric,
        norm=norm,
        summary=summarize(norm.values, n_boot=n_boot, seed=seed),
        pairwise=pairwise_tests(norm.values),
        ranks=rank_stability(norm.values),
        arch_comparison=compare_archs(norm.values),
        issues=issues,
        counts=completeness_counts(table, plan, issues, norm),
        diagnostics=discretization(table),
    )
