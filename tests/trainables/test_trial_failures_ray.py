"""Failures under a real local Ray, two trials in one Tuner (like test_trainable_ray.py):

- a trial whose loss turns NaN (lr 1e30) fails with that reason in Ray, the ledger and its
  MLflow run (tags and the traceback), and is not retried although Ray has a retry to give;
- a trial whose worker is SIGKILLed mid-run, its newest checkpoint truncated first, resumes from
  the newest intact checkpoint and finishes, every epoch logged once; the scratch folder the
  killed worker left is gone by the end.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.support.trials import tiny_config
from tests.support.tune import ResultLog, key_of, run_trials, tracked_experiment, tune_fields

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCHS = 4
KILL_AT = 2


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """Ray started with a scratch root of its own (trial workers inherit the environment)."""
    import ray

    root = tmp_path_factory.mktemp("scratch")
    old = os.environ.get("SWEEP_SCRATCH_DIR")
    os.environ["SWEEP_SCRATCH_DIR"] = str(root)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield root
    ray.shutdown()
    if old is None:
        os.environ.pop("SWEEP_SCRATCH_DIR")
    else:
        os.environ["SWEEP_SCRATCH_DIR"] = old


class KillAfterEpoch:
    """Truncates the trial's newest checkpoint, then SIGKILLs its worker (once)."""

    def __new__(cls, trial_key: str, epoch: int, record: Path):
        from ray import tune

        class _Kill(tune.Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                if key_of(trial.config) != trial_key or record.exists():
                    return
                if result.get("epoch") != epoch or result.get("done"):
                    return
                newest = sorted(Path(trial.path).glob("checkpoint_*"))[-1]
                state = newest / "state.pt"
                state.write_bytes(state.read_bytes()[:1000])
                record.write_text(json.dumps({"truncated": newest.name, "pid": result["pid"]}))
                os.kill(result["pid"], signal.SIGKILL)

        return _Kill()


def test_nan_fails_for_good_and_a_killed_trial_resumes_past_a_corrupt_checkpoint(scratch, tmp_path):
    from ray import tune

    from sweep.progress import LedgerCallback
    from sweep.storage import SweepStore
    from tests.support.mlflow_runs import find_trial_runs

    uri, tracking, client = tracked_experiment(tmp_path, "failures")
    diverging = tiny_config(tmp_path / "cache", recipe="baseline", lr=1e30, epochs=EPOCHS)
    killed = tiny_config(tmp_path / "cache", recipe="nvfp4", epochs=EPOCHS)
    store = SweepStore.open(str(tmp_path / "sweeps"), "failures")
    log, kill_record = tmp_path / "results.jsonl", tmp_path / "killed.json"
    results = run_trials(
        tmp_path,
        "failures",
        [tune_fields(diverging, tracking), tune_fields(killed, tracking)],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[
            ResultLog(log),
            KillAfterEpoch(killed.trial_key, KILL_AT, kill_record),
            LedgerCallback(store),
        ],
    )
    by_key = {key_of(r.config): r for r in results}
    rows = [json.loads(line) for line in log.read_text().splitlines()]

    # The NaN: failed with its reason, and the retry Ray gave it did not train.
    error = str(by_key[diverging.trial_key].error)
    assert "an earlier attempt failed for good: not retried" in error, error
    assert "NonFiniteLoss" in error and "training loss nan at epoch 1" in error
    assert [r["epoch"] for r in rows if r["trial_key"] == diverging.trial_key] == [None]
    entry = json.loads((tmp_path / "sweeps" / "failures" / "ledger.json").read_text())
    failed = entry[diverging.trial_key]
    assert failed["state"] == "FAILED" and failed["failure_kind"] == "non_finite_loss"
    assert failed["error"].startswith("NonFiniteLoss: ") and "training loss nan" in failed["error"]
    (run,) = find_trial_runs(uri, "failures", trial_key=diverging.trial_key)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == failed["error"]
    assert run.data.tags["failure_kind"] == "non_finite_loss"
    trace = Path(client.download_artifacts(run.info.run_id, "failure.txt", str(tmp_path)))
    assert "Traceback" in trace.read_text() and "NonFiniteLoss" in trace.read_text()

    # The killed trial: restored from the checkpoint before the truncated one, then finished.
    done = by_key[killed.trial_key]
    assert done.error is None and done.metrics["epochs_run"] == EPOCHS
    truncated = json.loads(kill_record.read_text())
    first_epoch_lost = int(truncated["truncated"].removeprefix("checkpoint_")) + 1
    epochs = [r["epoch"] for r in rows if r["trial_key"] == killed.trial_key and not r["done"]]
    pids = [r["pid"] for r in rows if r["trial_key"] == killed.trial_key and not r["done"]]
    after_kill = [e for e, p in zip(epochs, pids, strict=True) if p != truncated["pid"]]
    assert after_kill == list(range(first_epoch_lost, EPOCHS + 1)), epochs
    assert entry[killed.trial_key]["state"] == "FINISHED"
    (run,) = find_trial_runs(uri, "failures", trial_key=killed.trial_key)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_auprc")]
    assert steps == list(range(1, EPOCHS + 2))  # every epoch once, then the final value

    # Nothing left in the scratch root: the killed worker's folder was removed on restart.
    assert list(scratch.iterdir()) == []
