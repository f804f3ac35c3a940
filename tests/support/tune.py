"""Trials under a real local Ray Tune, as the sweep runner starts them: what a trial carries
(`TrialConfig.to_tune()`), a tracked MLflow experiment, a Tuner over a few trials, and a Tune
callback logging every result. Ray is imported when a helper runs, not with this module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainables.config import TUNE_KEY, TrialConfig


def tune_fields(config: TrialConfig, tracking: dict | None = None) -> dict:
    """What the sweep runner hands Ray Tune for one trial (sweep/runner.py): the whole config,
    with its tracking section."""
    return config.replace(tracking=tracking).to_tune()


def key_of(tune_config: dict) -> str:
    """The trial key of a Tune trial's config."""
    return TrialConfig.from_tune(tune_config).trial_key


def tracked_experiment(tmp_path: Path, experiment: str) -> tuple[str, dict, Any]:
    """(tracking URI, the config's tracking section, an MlflowClient) of a fresh sqlite store.

    The experiment is created here, as the sweep runner creates it with its parent run: two
    trial processes creating a fresh sqlite store at once race in MLflow's schema migration."""
    from mlflow.tracking import MlflowClient

    from trainables.mlflow_store import get_or_create_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    get_or_create_experiment(client, experiment)
    return uri, {"tracking_uri": uri, "experiment": experiment}, client


def run_trials(tmp_path: Path, name: str, trials: list[dict], **run_options: Any):
    """Tune's ResultGrid of the trainable over `trials` (`tune_fields`), one CPU each, one retry;
    `run_options` go to tune.RunConfig (callbacks, checkpoint_config...)."""
    from ray import tune

    from trainables.trainable import train_trial

    return tune.Tuner(
        tune.with_resources(train_trial, {"cpu": 1}),
        param_space={TUNE_KEY: tune.grid_search(trials)},
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(tmp_path / "ray_results"),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
            **run_options,
        ),
    ).fit()


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
