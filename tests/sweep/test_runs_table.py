"""The runs table read from a real sqlite MLflow store (see conftest.py for what it holds)."""

import math

import pandas as pd
import pytest

from sweep import runs
from sweep.analysis import SPIKINESS_THRESHOLD
from trainables import mlflow_schema as schema


@pytest.fixture(scope="module")
def complete(sweep_store):
    return runs.read_sweep(sweep_store.uri, sweep_store.complete)


@pytest.fixture(scope="module")
def incomplete(sweep_store):
    return runs.read_sweep(sweep_store.uri, sweep_store.incomplete)


def test_one_row_per_trial_with_logged_values(complete, sweep_store):
    table = complete.table
    expected = sweep_store.expected[sweep_store.complete]
    assert sorted(table["trial_key"]) == sorted(expected)
    assert table["trial_key"].is_unique
    logged = table.set_index("trial_key")["test_auprc"]
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value)
    assert (table["status"] == "FINISHED").all()
    assert (table["n_runs"] == 1).all()


def test_tag_columns_are_typed(complete):
    table = complete.table
    assert list(table.columns[: len(schema.TRIAL_TAGS)]) == list(schema.TRIAL_TAGS)
    assert str(table["seed"].dtype) == "Int64" and str(table["recipe_id"].dtype) == "Int64"
    row = table.set_index("trial_key").loc["swin-4m-2d_rht_sr-s2026-f1"]
    assert (
        row["arch"],
        row["scale"],
        row["recipe"],
        row["recipe_id"],
        row["seed"],
        row["fold"],
    ) == ("swin", "4m", "2d_rht_sr", 5, 2026, "f1")


def test_final_metric_wins_over_per_epoch_history(complete, sweep_store):
    # val_auprc is logged per epoch (steps 0-2) and as a final metric at step 3.
    table = complete.table.set_index("trial_key")
    for key, value in sweep_store.expected[sweep_store.complete].items():
        assert table.loc[key, "val_auprc"] == pytest.approx(value - 0.02)


def test_parent_and_plan_are_found(complete, sweep_store):
    assert complete.parent_run_id == sweep_store.parents[sweep_store.complete]
    assert sorted(p["trial_key"] for p in complete.plan) == sorted(
        sweep_store.expected[sweep_store.complete]
    )


def test_pages_give_the_same_table(sweep_store, complete):
    paged = runs.read_sweep(sweep_store.uri, sweep_store.complete, page_size=7, histograms=False)
    cols = [c for c in complete.table.columns if c != "hist_spikiness"]
    pd.testing.assert_frame_equal(
        paged.table[cols].sort_values("trial_key").reset_index(drop=True),
        complete.table[cols].sort_values("trial_key").reset_index(drop=True),
    )


def test_duplicates_keep_the_finished_run_and_count_them(incomplete):
    row = incomplete.table.set_index("trial_key").loc["cnn-500k-2d_rht_sr-s2026-holdout"]
    assert row["status"] == "FINISHED" and row["n_runs"] == 2
    assert row["test_auprc"] == pytest.approx(0.63)


def test_statuses_and_missing_metrics_are_kept_not_filled(incomplete):
    table = incomplete.table.set_index("trial_key")
    assert table.loc["cnn-500k-baseline-s2027-holdout", "status"] == "FAILED"
    assert table.loc["cnn-500k-2d_rht_sr-s2027-holdout", "status"] == "RUNNING"
    assert math.isnan(table.loc["cnn-500k-baseline-s2028-holdout", "test_auprc"])
    assert "stray" not in set(incomplete.table["run_id"])
    assert len(table) == 7  # 8 runs of trials, one trial tracked twice; the stray run is skipped


def test_histogram_spikiness_from_artifacts(incomplete, complete):
    table = incomplete.table.set_index("trial_key")
    assert table.loc["cnn-500k-nvfp4-s2026-holdout", "hist_spikiness"] > SPIKINESS_THRESHOLD
    assert table.loc["cnn-500k-baseline-s2026-holdout", "hist_spikiness"] < 0.05
    assert math.isnan(table.loc["cnn-500k-baseline-s2027-holdout", "hist_spikiness"])  # failed
    assert (complete.table["hist_spikiness"] < 0.05).all()


def test_unknown_sweep_names_the_existing_experiments(sweep_store):
    with pytest.raises(runs.SweepNotFound) as exc:
        runs.read_sweep(sweep_store.uri, "nope")
    message = str(exc.value)
    assert "'nope'" in message
    assert sweep_store.complete in message and sweep_store.incomplete in message


def test_fetch_curves_reads_the_chosen_runs(sweep_store):
    swept = runs.read_sweep(sweep_store.uri, sweep_store.complete, histograms=False)
    keys = ["cnn-500k-nvfp4-s2026-holdout", "swin-500k-baseline-s2027-holdout"]
    runs.fetch_curves(swept, keys)
    assert sorted(swept.curves) == sorted(keys)
    for curve in swept.curves.values():
        assert len(curve["pr_curve"]["recall"]) == 50
        assert len(curve["pred_hist"]["counts"]) == 100


@pytest.mark.parametrize("fmt", ["folder", "runs.parquet", "runs.csv"])
def test_snapshot_round_trip(incomplete, tmp_path, fmt):
    incomplete.curves = {
        "k": {"pr_curve": {"precision": [1.0], "recall": [0.0]}, "pred_hist": None}
    }
    runs.save_snapshot(incomplete, tmp_path)
    loaded = runs.load_snapshot(tmp_path if fmt == "folder" else tmp_path / fmt)
    pd.testing.assert_frame_equal(loaded.table, incomplete.table, check_dtype=fmt != "runs.csv")
    assert loaded.name == incomplete.name
    assert loaded.plan == incomplete.plan
    assert loaded.curves == incomplete.curves
    assert loaded.parent_run_id == incomplete.parent_run_id


def test_missing_snapshot_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="runs.parquet"):
        runs.load_snapshot(tmp_path)


def test_bad_plan_names_the_missing_keys():
    with pytest.raises(ValueError, match="entry 1 lacks \\['fold'\\]"):
        runs.validate_plan(
            [
                {
                    "trial_key": "a",
                    "arch": "cnn",
                    "scale": "4m",
                    "recipe": "nvfp4",
                    "seed": 1,
                    "fold": "holdout",
                },
                {"trial_key": "b", "arch": "cnn", "scale": "4m", "recipe": "nvfp4", "seed": 1},
            ]
        )


def test_local_artifact_uris():
    assert str(runs._local_path("file:///tmp/a%20b/artifacts")) == "/tmp/a b/artifacts"
    assert str(runs._local_path("/tmp/x/artifacts")) == "/tmp/x/artifacts"
    assert runs._local_path("mlflow-artifacts:/1/abc/artifacts") is None
    assert runs._local_path("s3://bucket/x") is None
