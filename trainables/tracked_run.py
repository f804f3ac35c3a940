"""A training run with its MLflow tracking around it: what the Ray trainable and `sweep train-one`
both run.

    result = run_tracked(config, checkpoint_dir, callbacks=[...])   # resumes if it can

Around the loop (trainables.loop.TrainingRun), whatever happens in it:

- before: the trial's tracker (trainables.tracking.TrialTracker) is opened, reopening the MLflow
  run the checkpoint names, with the run's flat tags (trainables.mlflow_schema.TRIAL_TAGS, then
  the config's own) and its params (the config, less tracking, callbacks and an Optuna sample's
  suffix, which the run's name carries); the data is logged
  as the run's dataset input and the system-metrics monitor started when asked for;
- during: the loop logs every epoch and the final metrics to the tracker, and the artifacts
  (trainables.artifacts) are written at the final evaluation and logged;
- after: the failure, if any, is recorded on the run (trainables.failures), its description is
  set (trainables.run_notes), and the tracker is finished with the status that says how the run
  ended: FINISHED, FAILED, or KILLED (an interrupt).

The tracker's journal lives inside the checkpoint (`TRACKING_DIR`), so it travels with it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from trainables.artifacts import ARTIFACTS_DIR, ArtifactsCallback
from trainables.callbacks import Callback
from trainables.checkpoint import STATE_FILE, read_tracking_state
from trainables.config import TrialConfig
from trainables.data import resolve_data_root
from trainables.failures import FAILURE_TAGS, record_failure
from trainables.loop import RunResult, TrainingRun
from trainables.mlflow_schema import TRIAL_KEY_TAG, TRIAL_TAGS, short_sha

__all__ = ["TRACKING_DIR", "build_tracker", "run_tracked", "trial_tags"]

TRACKING_DIR = "tracking"  # the MLflow journal, inside the checkpoint so it travels with it


def trial_tags(config: TrialConfig) -> dict[str, str]:
    """The child run's flat tags, in the schema's order (TRIAL_TAGS). The run's key is `run_key`:
    an Optuna sample's own (its grid point's key and its suffix), else the grid point's."""
    recipe = config.recipe_object()
    values = (
        config.tracking.experiment,
        config.run_key,
        config.arch,
        config.scale,
        config.recipe,
        "" if recipe.paper_id is None else str(recipe.paper_id),
        str(config.seed),
        config.fold,
        str(config.split_seed),
        config.config_hash,
        short_sha(config.code_version.partition("+g")[2]),
    )
    return dict(zip(TRIAL_TAGS, values, strict=True))


def build_tracker(config: TrialConfig, checkpoint_dir: Path):
    """The trial's MLflow tracker, reopening the run id the checkpoint kept (None: no tracking).
    With an outbox, records still undelivered at the end are kept there (trainables.outbox). An
    entry an earlier attempt of this trial left there is dropped: this attempt supersedes it
    (its restored journal holds the same records, and its own end sets the run's status)."""
    if config.tracking is None:
        return None
    from trainables.mlflow_store import resolve_tracking_uri
    from trainables.tracking import TrialTracker

    tags = trial_tags(config)
    trial_key = tags[TRIAL_KEY_TAG]
    params = config.model_dump(mode="json", exclude={"tracking", "callbacks", "sample_suffix"})
    keep_pending = None
    if config.tracking.outbox:
        from trainables.outbox import Outbox, keeper

        outbox = Outbox.at(config.tracking.outbox, config.tracking.outbox_endpoint)
        outbox.discard(trial_key)
        uri = resolve_tracking_uri(config.tracking.tracking_uri)
        keep_pending = keeper(outbox, trial_key, uri)
    tracker = TrialTracker(
        tracking_uri=config.tracking.tracking_uri,
        experiment=config.tracking.experiment,
        trial_key=trial_key,
        tags=tags,
        params=params,
        buffer_dir=checkpoint_dir / TRACKING_DIR,
        parent_run_id=config.tracking.parent_run_id,
        run_id=read_tracking_state(checkpoint_dir).get("run_id"),
        finish_timeout_s=config.tracking.finish_timeout_s,
        keep_pending=keep_pending,
    )
    tracker.start()
    return tracker


def run_tracked(
    config: TrialConfig,
    checkpoint_dir: Path,
    *,
    callbacks: list[Callback],
    data_root: Path | None = None,
    device: str | None = None,
    artifacts_dir: Path | None = None,
) -> RunResult:
    """The loop with its tracker's lifecycle around it; resumes if `checkpoint_dir` holds one.
    Artifacts default to `checkpoint_dir`/artifacts, so Tune persists them with the checkpoint.

    Around the loop, for the MLflow UI: the data as the run's dataset input, system metrics when
    asked for (trainables.system_metrics), and the run's description once it ends, finished or
    not (trainables.run_notes)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    resume = checkpoint_dir if (checkpoint_dir / STATE_FILE).is_file() else None
    artifacts = ArtifactsCallback(artifacts_dir or checkpoint_dir / ARTIFACTS_DIR)
    tracker = build_tracker(config, checkpoint_dir)
    status, result, error, monitor = "FAILED", None, None, None
    try:
        root = Path(data_root) if data_root is not None else resolve_data_root(config)
        run = TrainingRun(
            config,
            checkpoint_dir=checkpoint_dir,
            data_root=root,
            resume_from=resume,
            device=device,
            tracker=tracker,
            callbacks=[artifacts, *callbacks],
        )
        monitor = _observe(tracker, config, run, root)
        result = replace(run.fit(), artifacts_dir=artifacts.folder)
        status = "FINISHED"
        return result
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    except Exception as exc:
        error = exc
        if tracker is not None:
            record_failure(tracker, exc)
        raise
    finally:
        _close_tracking(tracker, config, status, result, error, monitor)


def _observe(tracker, config: TrialConfig, run: TrainingRun, root: Path):
    """Log the run's dataset input; start its system-metrics monitor (None if not wanted)."""
    if tracker is None:
        return None
    from trainables import run_notes, system_metrics

    tracker.log_dataset(run_notes.dataset_input(config, run.data, root))
    return system_metrics.start(config.tracking, tracker.run_id, run.device.type)


def _close_tracking(tracker, config: TrialConfig, status: str, result, error, monitor) -> None:
    if tracker is None:
        return
    from trainables import run_notes, system_metrics

    system_metrics.stop(monitor)  # first: the monitor logs only while the run is RUNNING
    try:
        tracker.set_note(run_notes.trial_note(config, result, error))
    except Exception as exc:  # a description is not worth masking how the run ended
        logging.getLogger(__name__).warning("%s: no run description: %s", config.trial_key, exc)
    if status == "FINISHED":  # an earlier attempt may have failed
        tracker.log_tags({}, delete=FAILURE_TAGS)
    tracker.finish(status)
