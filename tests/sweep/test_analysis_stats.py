"""The statistics on small hand-made tables, against answers worked out by hand or with direct
scipy calls (never with the code under test)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sweep import analysis as A
from trainables.histogram import histogram_spikiness

RID = {"baseline": 0, "nvfp4": 1, "2d_rht_sr": 5}


def table(rows) -> pd.DataFrame:
    """Runs table from (arch, scale, recipe, seed, fold, status, test_auprc) tuples."""
    df = pd.DataFrame(
        rows, columns=["arch", "scale", "recipe", "seed", "fold", "status", "test_auprc"]
    )
    df["trial_key"] = [
        f"{a}-{s}-{r}-s{n}-{f}"
        for a, s, r, n, f in df[["arch", "scale", "recipe", "seed", "fold"]].itertuples(index=False)
    ]
    df["run_id"] = [f"run{i}" for i in range(len(df))]
    df["recipe_id"] = df["recipe"].map(RID)
    return df


def grid(values: dict[str, list[float]], arch="cnn", scale="4m") -> pd.DataFrame:
    """One (arch, scale) group: recipe -> metric per seed 1..n, all finished holdout runs."""
    return table(
        [
            (arch, scale, r, seed, "holdout", "FINISHED", v)
            for r, vs in values.items()
            for seed, v in enumerate(vs, start=1)
        ]
    )


# --------------------------------------------------------------------------- intervals


def test_t_interval_by_hand():
    # mean 3, SD sqrt(2.5) = 1.58114, t(0.975, 4) = 2.776445 -> half-width 1.963243
    lo, hi = A.t_interval([1, 2, 3, 4, 5])
    assert lo == pytest.approx(3 - 1.963243, abs=1e-6)
    assert hi == pytest.approx(3 + 1.963243, abs=1e-6)


def test_t_interval_matches_scipy():
    v = np.array([0.71, 0.74, 0.69, 0.80, 0.77, 0.73])
    expected = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert A.t_interval(v) == pytest.approx(expected)


@pytest.mark.parametrize("values", [[], [0.7]])
def test_intervals_need_two_values(values):
    assert all(math.isnan(x) for x in (*A.t_interval(values), *A.bootstrap_interval(values)))


def test_bootstrap_is_seeded_and_near_the_t_interval_for_normal_data():
    v = np.random.default_rng(3).normal(10, 2, size=400)
    a = A.bootstrap_interval(v, seed=7)
    assert a == A.bootstrap_interval(v, seed=7)
    assert a != A.bootstrap_interval(v, seed=8)
    t_lo, t_hi = A.t_interval(v)
    half = (t_hi - t_lo) / 2
    assert a[0] == pytest.approx(t_lo, abs=0.1 * half) and a[1] == pytest.approx(
        t_hi, abs=0.1 * half
    )


def test_bootstrap_of_constant_values_is_a_point():
    assert A.bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)


# --------------------------------------------------------------------------- normalization


def test_normalization_with_a_missing_baseline():
    runs = table(
        [
            ("cnn", "4m", "baseline", 1, "holdout", "FINISHED", 0.80),
            ("cnn", "4m", "nvfp4", 1, "holdout", "FINISHED", 0.72),
            ("cnn", "4m", "baseline", 2, "holdout", "FAILED", np.nan),  # seed 2 has no baseline
            ("cnn", "4m", "nvfp4", 2, "holdout", "FINISHED", 0.70),
            ("cnn", "4m", "nvfp4", 3, "holdout", "FAILED", 0.10),  # failed: never used
            ("cnn", "4m", "baseline", 1, "f0", "FINISHED", 0.50),  # other fold: its own baseline
            ("cnn", "4m", "nvfp4", 1, "f0", "FINISHED", 0.55),
            ("swin", "4m", "nvfp4", 1, "holdout", "FINISHED", 0.90),  # other arch: no baseline
        ]
    )
    norm = A.normalize(runs)
    got = norm.values.set_index("trial_key")["normalized"]
    assert got["cnn-4m-baseline-s1-holdout"] == pytest.approx(100.0)
    assert got["cnn-4m-nvfp4-s1-holdout"] == pytest.approx(90.0)  # 0.72 / 0.80
    assert got["cnn-4m-nvfp4-s1-f0"] == pytest.approx(110.0)  # 0.55 / 0.50
    assert math.isnan(got["cnn-4m-nvfp4-s2-holdout"]) and math.isnan(
        got["swin-4m-nvfp4-s1-holdout"]
    )
    assert "cnn-4m-nvfp4-s3-holdout" not in got.index  # failed runs are not values at all
    assert sorted(norm.excluded["trial_key"]) == [
        "cnn-4m-nvfp4-s2-holdout",
        "swin-4m-nvfp4-s1-holdout",
    ]
    assert norm.excluded["reason"].str.contains("no finished baseline").all()
    # Summaries: raw stats over every usable run, normalized stats only over normalized ones.
    summary = A.summarize(norm.values, n_boot=200).set_index(["split", "arch", "recipe"])
    cell = summary.loc[("holdout", "cnn", "nvfp4")]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(0.71)
    assert cell["norm_n"] == 1 and cell["norm_mean"] == pytest.approx(90.0)
    assert math.isnan(cell["norm_sd"])


def test_a_baseline_without_the_metric_is_named_as_such():
    runs = table(
        [
            ("cnn", "4m", "baseline", 1, "holdout", "FINISHED", np.nan),  # finished, no metric
            ("cnn", "4m", "nvfp4", 1, "holdout", "FINISHED", 0.72),
            ("cnn", "4m", "baseline", 2, "holdout", "FAILED", np.nan),
            ("cnn", "4m", "nvfp4", 2, "holdout", "FINISHED", 0.70),
        ]
    )
    result = A.analyze_table(runs, None, n_boot=50)
    excluded = result.norm.excluded
    reasons = dict(zip(excluded["trial_key"], excluded["reason"], strict=True))
    assert reasons == {
        "cnn-4m-nvfp4-s1-holdout": "baseline finished without test_auprc",
        "cnn-4m-nvfp4-s2-holdout": "no finished baseline run at this arch/scale/seed/fold",
    }
    issues = result.issues.set_index(["trial_key", "problem"])["detail"]
    assert (
        issues["cnn-4m-nvfp4-s1-holdout", "no baseline"] == "baseline finished without test_auprc"
    )


def test_zero_baseline_is_excluded_not_divided():
    norm = A.normalize(grid({"baseline": [0.0], "nvfp4": [0.5]}))
    assert norm.values["normalized"].isna().all()
    assert set(norm.excluded["reason"]) == {"baseline test_auprc is 0"}


def test_val_metric_on_request_and_unknown_metric_rejected():
    runs = grid({"baseline": [0.5], "nvfp4": [0.4]}).assign(val_auprc=[0.8, 0.6])
    assert A.normalize(runs, "val_auprc").values["normalized"].tolist() == pytest.approx([100, 75])
    with pytest.raises(ValueError, match="test_auprc"):
        A.analyze_table(runs, metric="auprc")


def test_summary_per_cell_matches_numpy():
    values = {"baseline": [0.80, 0.82, 0.78, 0.81], "nvfp4": [0.76, 0.80, 0.74, 0.79]}
    summary = A.summarize(A.normalize(grid(values)).values, n_boot=500)
    row = summary[summary["recipe"] == "nvfp4"].iloc[0]
    v = np.array(values["nvfp4"])
    assert row["n"] == 4 and row["mean"] == pytest.approx(v.mean())
    assert row["sd"] == pytest.approx(v.std(ddof=1))
    norm = 100 * v / np.array(values["baseline"])
    assert row["norm_mean"] == pytest.approx(norm.mean())
    lo, hi = stats.t.interval(0.95, 3, loc=norm.mean(), scale=stats.sem(norm))
    assert (row["norm_ci95_lo"], row["norm_ci95_hi"]) == pytest.approx((lo, hi))
    assert row["norm_boot_lo"] <= norm.mean() <= row["norm_boot_hi"]
    assert summary["recipe"].tolist() == ["baseline", "nvfp4"]


# --------------------------------------------------------------------------- paired tests


def test_wilcoxon_by_hand():
    # All 5 differences positive: W- = 0; exact two-sided p = 2 / 2^5 = 0.0625.
    stat, p, note = A.wilcoxon_signed_rank([1, 2, 3, 4, 5])
    assert (stat, p, note) == (0.0, pytest.approx(0.0625), "")


def test_wilcoxon_matches_scipy_and_drops_zeros():
    d = np.array([0.02, -0.01, 0.03, 0.0, 0.05, 0.04, -0.02, 0.0])
    expected = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    stat, p, note = A.wilcoxon_signed_rank(d)
    assert stat == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
    assert note == "2 zero difference(s) dropped"


@pytest.mark.parametrize(
    ("d", "reason"),
    [
        ([0.1], "only 1 paired seed"),
        ([], "only 0 paired seed"),
        ([0.0, 0.0, 0.0], "all paired differences are zero"),
    ],
)
def test_wilcoxon_degenerate_cases_are_nan_with_a_reason(d, reason):
    stat, p, note = A.wilcoxon_signed_rank(d)
    assert math.isnan(stat) and math.isnan(p) and reason in note


def test_holm_by_hand():
    # m = 3 valid: sorted 0.01 -> 3 x 0.01 = 0.03; 0.03 -> 2 x 0.03 = 0.06; 0.04 -> 1 x 0.04,
    # raised to the running max 0.06. NaN stays NaN and is not counted.
    adj = A.holm([0.01, 0.04, 0.03, np.nan])
    np.testing.assert_allclose(adj[:3], [0.03, 0.06, 0.06])
    assert math.isnan(adj[3])
    np.testing.assert_allclose(A.holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1


def test_cohens_d_by_hand():
    # d = 1, 2, 3, 4: mean 2.5, SD sqrt(5/3) = 1.290994 -> 1.936492
    assert A.paired_cohens_d([1, 2, 3, 4]) == (pytest.approx(1.936492, abs=1e-6), "")
    assert math.isnan(A.paired_cohens_d([0.1, 0.1, 0.1])[0])
    assert A.paired_cohens_d([0.1, 0.1])[1] == "paired differences have zero SD"


def test_pairwise_pairs_over_common_seeds_with_holm_in_the_group():
    values = {
        "baseline": [0.80, 0.82, 0.78, 0.81, 0.79, 0.83],
        "nvfp4": [0.70, 0.75, 0.69, 0.74, 0.72, 0.71],
        "2d_rht_sr": [0.81, 0.80, 0.79, 0.84, 0.80, np.nan],  # seed 6 missing
    }
    runs = grid(values)
    runs = runs[runs["test_auprc"].notna()]
    other = grid({"baseline": [0.5, 0.6], "nvfp4": [0.4, 0.7]}, arch="swin")  # its own group
    result = A.pairwise_tests(A.normalize(pd.concat([runs, other])).values)
    cnn = result[result["arch"] == "cnn"].set_index(["recipe_a", "recipe_b"])
    assert list(cnn.index) == [
        ("baseline", "nvfp4"),
        ("baseline", "2d_rht_sr"),
        ("nvfp4", "2d_rht_sr"),
    ]
    b, n, s = (np.array(values[k]) for k in ("baseline", "nvfp4", "2d_rht_sr"))
    pairs = {
        ("baseline", "nvfp4"): n - b,
        ("baseline", "2d_rht_sr"): (s - b)[:5],
        ("nvfp4", "2d_rht_sr"): (s - n)[:5],
    }
    raw = {}
    for key, d in pairs.items():
        row = cnn.loc[key]
        assert row["n_pairs"] == len(d) and row["diff_mean"] == pytest.approx(d.mean())
        raw[key] = stats.wilcoxon(d).pvalue
        assert row["p_value"] == pytest.approx(raw[key])
        assert row["cohens_d"] == pytest.approx(d.mean() / d.std(ddof=1))
    # Holm by hand over the three p-values of the cnn group only.
    order = sorted(raw, key=raw.get)
    running = 0.0
    for i, key in enumerate(order):
        running = max(running, min(1.0, (3 - i) * raw[key]))
        assert cnn.loc[key, "p_holm"] == pytest.approx(running)
    swin = result[result["arch"] == "swin"]
    assert len(swin) == 1 and swin["p_holm"].iloc[0] == pytest.approx(swin["p_value"].iloc[0])


# --------------------------------------------------------------------------- Kendall's W


def test_kendalls_w_hand_worked_with_ties():
    # 3 seeds rank 4 recipes; seed 3 ties the first two (average rank 3.5):
    #   seed 1 scores 4 3 2 1 -> ranks 4 3 2 1
    #   seed 2 scores 4 3 1 2 -> ranks 4 3 1 2
    #   seed 3 scores 3 3 1 2 -> ranks 3.5 3.5 1 2
    # R = 11.5, 9.5, 4, 5; mean m(n+1)/2 = 7.5; S = 4^2 + 2^2 + 3.5^2 + 2.5^2 = 38.5
    # ties: one group of 2 -> 2^3 - 2 = 6; W = 12 * 38.5 / (9 * 60 - 3 * 6) = 462 / 522
    scores = np.array([[4, 3, 2, 1], [4, 3, 1, 2], [3, 3, 1, 2]], dtype=float)
    assert A.kendalls_w(scores) == pytest.approx(462 / 522)
    # Friedman's tie-corrected chi-square is m (n - 1) W.
    chi2 = stats.friedmanchisquare(*scores.T).statistic
    assert A.kendalls_w(scores) == pytest.approx(chi2 / (3 * 3))


def test_kendalls_w_limits():
    assert A.kendalls_w(np.array([[1, 2, 3], [1, 2, 3], [10, 20, 30]])) == pytest.approx(1.0)
    assert A.kendalls_w(np.array([[1, 2], [2, 1]])) == pytest.approx(0.0)
    assert math.isnan(A.kendalls_w(np.array([[1, 2, 3]])))  # one seed
    assert math.isnan(A.kendalls_w(np.array([[1, 1], [2, 2]])))  # every seed ties everything


def test_rank_stability_uses_complete_seeds():
    values = {
        "baseline": [0.8, 0.7, 0.9, 0.6],
        "nvfp4": [0.7, 0.6, 0.8, np.nan],
        "2d_rht_sr": [0.9, 0.8, 0.95, 0.7],
    }
    runs = grid(values)
    ranks = A.rank_stability(A.normalize(runs[runs["test_auprc"].notna()]).values)
    row = ranks.iloc[0]
    assert (row["n_seeds"], row["n_recipes"], row["kendall_w"]) == (3, 3, pytest.approx(1.0))
    assert row["note"] == "1 incomplete seed(s) dropped"
    assert row["friedman_chi2"] == pytest.approx(6.0)
    assert row["p_value"] == pytest.approx(stats.chi2.sf(6.0, 2))


# --------------------------------------------------------------------------- Swin vs CNN


def test_swin_vs_cnn_mann_whitney_named_in_the_output():
    swin = [0.80, 0.78, 0.82, 0.79]
    cnn = [0.74, 0.76, 0.71]
    runs = pd.concat(
        [
            grid({"baseline": swin}, arch="swin"),
            grid({"baseline": cnn}, arch="cnn"),
            grid({"nvfp4": [0.5]}, arch="swin"),
            grid({"nvfp4": [0.4]}, arch="cnn"),
        ]
    )
    out = A.compare_archs(A.normalize(runs).values).set_index("recipe")
    row = out.loc["baseline"]
    expected = stats.mannwhitneyu(swin, cnn, alternative="two-sided")
    assert row["test"] == "Mann-Whitney U (two-sided)"
    assert row["statistic"] == pytest.approx(expected.statistic)
    assert row["p_value"] == pytest.approx(expected.pvalue)
    assert (row["n_a"], row["n_b"]) == (4, 3) and row["mean_a"] == pytest.approx(np.mean(swin))
    assert math.isnan(out.loc["nvfp4", "p_value"]) and "too few" in out.loc["nvfp4", "note"]


# --------------------------------------------------------------------------- completeness


def test_completeness_lists_every_problem_once():
    runs = table(
        [
            ("cnn", "4m", "baseline", 1, "holdout", "FINISHED", 0.8),
            ("cnn", "4m", "nvfp4", 1, "holdout", "FAILED", np.nan),
            ("cnn", "4m", "baseline", 2, "holdout", "KILLED", np.nan),
            ("cnn", "4m", "nvfp4", 2, "holdout", "FINISHED", 0.7),  # -> no baseline
            ("cnn", "4m", "baseline", 3, "holdout", "RUNNING", np.nan),
            ("cnn", "4m", "nvfp4", 3, "holdout", "FINISHED", np.nan),  # -> no test_auprc
            ("cnn", "4m", "nvfp4", 9, "holdout", "FINISHED", 0.7),  # not planned
        ]
    )
    plan = [
        {
            "trial_key": f"cnn-4m-{r}-s{s}-holdout",
            "arch": "cnn",
            "scale": "4m",
            "recipe": r,
            "seed": s,
            "fold": "holdout",
        }
        for r in ("baseline", "nvfp4")
        for s in (1, 2, 3, 4)
    ]
    result = A.analyze_table(runs, plan, n_boot=100)
    problems = sorted(zip(result.issues["trial_key"], result.issues["problem"], strict=True))
    assert problems == [
        ("cnn-4m-baseline-s2-holdout", "killed"),
        ("cnn-4m-baseline-s3-holdout", "running"),
        ("cnn-4m-baseline-s4-holdout", "missing"),
        ("cnn-4m-nvfp4-s1-holdout", "failed"),
        ("cnn-4m-nvfp4-s2-holdout", "no baseline"),
        ("cnn-4m-nvfp4-s3-holdout", "no test_auprc"),
        ("cnn-4m-nvfp4-s4-holdout", "missing"),
        ("cnn-4m-nvfp4-s9-holdout", "no baseline"),
        ("cnn-4m-nvfp4-s9-holdout", "not in plan"),
    ]
    assert result.counts == {
        "planned": 8,
        "tracked": 7,
        "extra runs": 0,
        "finished": 4,
        "usable": 3,
        "normalized": 1,
        "missing": 2,
        "failed": 1,
        "killed": 1,
        "running": 1,
        "no test_auprc": 1,
        "no baseline": 2,
    }
    # Nothing is zero-filled: the cell mean is over the finished values only.
    cell = result.summary.set_index("recipe").loc["nvfp4"]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(0.7)


# --------------------------------------------------------------------------- discretization


def test_spikiness_by_hand():
    # Interior [0, 0, 0, 50, 0, 0, 0]: the 7-bin running median at the spike is 0, allowance
    # 3 * sqrt(0 + 1) = 3, so 47 of the 50 interior counts are spike mass.
    counts = [100, 0, 0, 0, 50, 0, 0, 0, 100]
    assert histogram_spikiness(counts) == pytest.approx(47 / 50)


def test_spikiness_smooth_vs_comb():
    edges = np.linspace(0, 1, 101)
    mids = (edges[:-1] + edges[1:]) / 2
    smooth = 1e6 * stats.beta.pdf(mids, 0.5, 0.5) / 100
    assert histogram_spikiness(smooth) < 0.01
    comb = np.zeros(100)
    comb[[0, 99]] = 1e6
    comb[[10, 30, 50, 70]] = 1e4
    assert histogram_spikiness(comb) > 0.99
    assert histogram_spikiness([5, 0, 0, 0, 7]) == 0.0  # empty interior
    assert math.isnan(histogram_spikiness([]))


def test_discretization_flags_and_missing_inputs():
    runs = grid({"baseline": [0.8, 0.8, 0.8]})
    runs["hist_spikiness"] = [0.9, 0.1, np.nan]
    runs["test_distinct_pred_values"] = [5000, 40, np.nan]
    diag = A.discretization(runs)
    assert diag["discretized"].tolist() == [True, True, False]
    assert diag["reason"].tolist() == ["spikiness > 0.5", "< 256 distinct values", ""]
    no_columns = A.discretization(grid({"baseline": [0.8]}))
    assert no_columns["hist_spikiness"].isna().all() and not no_columns["discretized"].any()
