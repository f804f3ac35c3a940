"""The Ray Tune trainable under a real local Ray: metrics every epoch, checkpoints, an injected
failure and a restore that continues at the right epoch with the right history, one MLflow run per
trial (like Ray's python/ray/tune/tests/test_tuner_restore.py)."""

from __future__ import annotations

import json
import os

import pytest

from trainables.config import TUNE_KEY, TrialConfig

EPOCHS = 3
FAIL_AT = 2


def trial_config(tmp_path, recipe: str, **changes) -> TrialConfig:
    return TrialConfig.from_fields(
        {
            "arch": "cnn",
            "scale": "tiny",
            "recipe": recipe,
            "seed": 2026,
            "synthetic": {"patients": 10, "size": 32, "seed": 0, "slices_per_patient": 4},
            "image_size": 32,
            "epochs": EPOCHS,
            "batch_size": 8,
            "cache_dir": str(tmp_path / "cache"),
            **changes,
        }
    )


def tune_fields(config: TrialConfig, tracking: dict | None = None) -> dict:
    """What the sweep runner hands Ray Tune for one trial (sweep/runner.py): the whole config."""
    return config.replace(tracking=tracking).to_tune()


def key_of(tune_config: dict) -> str:
    return TrialConfig.from_tune(tune_config).trial_key


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


class ResultLog:
    """A Tune callback writing every reported result to a JSONL file (read back by the test)."""

    def __new__(cls, path):
        from ray import tune

        class _Log(tune.Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                keep = ("epoch", "done", "pid", "threads", "val_loss")
                row = {
                    "trial_key": key_of(trial.config),
                    **{k: result.get(k) for k in keep},
                }
                with open(path, "a") as f:
                    f.write(json.dumps(row) + "\n")

        return _Log()


@pytest.mark.e2e
@pytest.mark.slow
def test_two_trials_with_an_injected_failure_resume_exactly(local_ray, tmp_path):
    from mlflow.tracking import MlflowClient
    from ray import tune

    from trainables.checkpoint import load_checkpoint
    from trainables.tracking import find_trial_runs, get_or_create_experiment
    from trainables.trainable import train_trial

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = {"tracking_uri": tracking_uri, "experiment": "ray-test"}
    # The driver creates the store first, as the sweep runner does with its parent run: two trial
    # processes creating a fresh sqlite store at once race in MLflow's schema migration.
    client = MlflowClient(tracking_uri)
    get_or_create_experiment(client, "ray-test")
    flaky = trial_config(tmp_path, "baseline", test_hooks={"fail_at_epoch": FAIL_AT})
    steady = trial_config(tmp_path, "nvfp4")
    log = tmp_path / "results.jsonl"
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": 1}),
        param_space={
            TUNE_KEY: tune.grid_search(
                [tune_fields(flaky, tracking), tune_fields(steady, tracking)]
            )
        },
        run_config=tune.RunConfig(
            name="trainable-test",
            storage_path=str(tmp_path / "ray_results"),
            failure_config=tune.FailureConfig(max_failures=1),
            callbacks=[ResultLog(log)],
            verbose=0,
        ),
    )
    results = tuner.fit()
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
