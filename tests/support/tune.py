"""Trials under a real local Ray Tune, as the sweep runner starts them: the per-trial payload,
a tracked MLflow experiment, a Tuner over a few trials, and a Tune callback logging every result.
Ray is imported when a helper runs, not with this module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainables.config import TrialConfig


def payload(config: TrialConfig, tracking: dict | None = None) -> dict:
    """The sweep runner's per-trial payload (sweep/runner.py)."""
    return {
        "trial_key": config.trial_key,
        "trial": config.to_dict(),
        "config_hash": config.config_hash,
        "tracking": tracking,
        "save_weights": False,
    }


def tracked_experiment(tmp_path: Path, experiment: str) -> tuple[str, dict, Any]:
    """(tracking URI, the payload's tracking entry, an MlflowClient) of a fresh sqlite store.

    The experiment is created here, as the sweep runner creates it with its parent run: two
    trial processes creating a fresh sqlite store at once race in MLflow's schema migration."""
    from mlflow.tracking import MlflowClient

    from trainables.tracking import get_or_create_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    get_or_create_experiment(client, experiment)
    return uri, {"uri": uri, "experiment": experiment, "parent_run_id": None}, client


def run_trials(tmp_path: Path, name: str, trials: list[dict], **run_options: Any):
    """Tune's ResultGrid of the trainable over `trials` (payloads), one CPU each, one retry;
    `run_options` go to tune.RunConfig (callbacks, checkpoint_config...)."""
    from ray import tune

    from trainables.trainable import train_trial

    return tune.Tuner(
        tune.with_resources(train_trial, {"cpu": 1}),
        param_space={"trial": tune.grid_search(trials)},
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
                    "trial_key": trial.config["trial"]["trial_key"],
                    **{k: result.get(k) for k in keep},
                }
                with open(path, "a") as f:
                    f.write(json.dumps(row) + "\n")

        return _Log()
