"""The Ray Tune trainable under a real local Ray: metrics every epoch, checkpoints, an injected
failure and a restore that continues at the right epoch with the right history, one MLflow run per
trial (like Ray's python/ray/tune/tests/test_tuner_restore.py)."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.hooks import fail_at_epoch
from tests.support.trials import tiny_config
from tests.support.tune import ResultLog, key_of, run_trials, tracked_experiment, tune_fields
from trainables.config import TrialConfig

EPOCHS = 3
FAIL_AT = 2


def trial_config(tmp_path, recipe: str, **changes) -> TrialConfig:
    return tiny_config(tmp_path / "cache", **{"recipe": recipe, "epochs": EPOCHS, **changes})


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.e2e
@pytest.mark.slow
def test_two_trials_with_an_injected_failure_resume_exactly(local_ray, tmp_path):
    from tests.support.mlflow_runs import find_trial_runs
    from trainables.checkpoint import load_checkpoint

    tracking_uri, tracking, client = tracked_experiment(tmp_path, "ray-test")
    flaky = trial_config(tmp_path, "baseline", callbacks=[fail_at_epoch(FAIL_AT)])
    steady = trial_config(tmp_path, "nvfp4")
    log = tmp_path / "results.jsonl"
    trials = [tune_fields(flaky, tracking), tune_fields(steady, tracking)]
    results = run_trials(tmp_path, "trainable-test", trials, callbacks=[ResultLog(log)])
    assert not results.errors, results.errors

    rows = [json.loads(line) for line in log.read_text().splitlines()]
    by_key = {key_of(r.config): r for r in results}
    assert set(by_key) == {flaky.trial_key, steady.trial_key}
    for key, result in by_key.items():
        reported = [r for r in rows if r["trial_key"] == key]
        per_epoch = [r for r in reported if not r["done"]]
        # Every epoch reported exactly once, in order, across the failure and the restore.
        assert [r["epoch"] for r in per_epoch] == list(range(1, EPOCHS + 1)), key
        assert reported[-1]["done"] and reported[-1]["epoch"] == EPOCHS
        assert all(r["threads"] == 1 for r in reported)  # torch sized to the trial's one CPU
        assert result.metrics["epochs_run"] == EPOCHS and "test_auprc" in result.metrics

        # The final checkpoint carries the whole history and the finished flag.
        with result.checkpoint.as_directory() as directory:
            state = load_checkpoint(directory)
        assert state["finished"]
        assert [h["epoch"] for h in state["history"]] == list(range(1, EPOCHS + 1))
        assert [h["val_loss"] for h in state["history"]] == [r["val_loss"] for r in per_epoch]

        # A checkpoint was persisted for every report.
        checkpoints = [d for d in os.listdir(result.path) if d.startswith("checkpoint_")]
        assert len(checkpoints) == EPOCHS + 1

    # The flaky trial really failed once: epoch FAIL_AT was reported by a second process, which
    # started from the checkpoint of epoch FAIL_AT - 1.
    pids = {
        r["epoch"]: r["pid"] for r in rows if r["trial_key"] == flaky.trial_key and not r["done"]
    }
    assert pids[FAIL_AT - 1] != pids[FAIL_AT]
    steady_pids = {r["pid"] for r in rows if r["trial_key"] == steady.trial_key}
    assert len(steady_pids) == 1

    # One MLflow run per trial, every epoch logged once, the failed attempt's run reused.
    for config in (flaky, steady):
        runs = find_trial_runs(tracking_uri, "ray-test", trial_key=config.trial_key)
        assert len(runs) == 1
        run = runs[0]
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_auprc")]
        assert steps == list(range(1, EPOCHS + 2))  # epochs, then the final value one step later
        assert run.data.tags["config_hash"] == config.config_hash
