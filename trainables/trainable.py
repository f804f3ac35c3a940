"""The Ray Tune function trainable: a thin adapter from one Tune trial to `trainables.loop`.

    tune.Tuner(
        tune.with_resources(train_trial, {"cpu": 1}),
        param_space={TUNE_KEY: config.to_tune()},  # or tune.grid_search([...]) of several
        ...,
    )

What it adds to the loop, and nothing else:
- the config: Tune's `config` is ``{TUNE_KEY: TrialConfig.to_tune()}``, the whole trial config,
  its tracking settings included, with an Optuna sample's values merged on top
  (`TrialConfig.from_tune`); a config whose hash this code computes differently from the driver's
  is refused;
- threads: torch uses as many threads as CPUs Ray gave the trial;
- restore: `ray.tune.get_checkpoint()` is downloaded into the trial's working folder and the run
  continues from it (the MLflow journal inside it too); a checkpoint that cannot be read falls
  back to the newest older one Tune keeps, with a warning naming both; a checkpoint of a finished
  run reports its final metrics again and trains nothing;
- failures: one a retry cannot fix (trainables.failures: a non-finite loss, a config or data
  error) marks the checkpoint and reports it before the error is raised, so that Ray's retry, or
  `sweep resume`, fails at once with the first reason instead of training again;
- reporting: after each epoch, `ray.tune.report(metrics + {"epoch", "done": False, "threads",
  "tracking_pending"}, checkpoint=<the epoch's checkpoint folder>)`, and, once the MLflow run is
  finished, the final metrics with ``done=True`` (Ray 2.60 spellings; the `ray.train.*` ones
  raise inside Tune);
- MLflow: a TrialTracker when the config has a tracking section, reopened by the run id kept in
  the checkpoint (never two runs per trial), finished FINISHED, FAILED (an exception, a
  non-finite loss included: the trial errors with that reason) or KILLED (interrupted);
- memory and disk: the working folder (trainables.scratch) is deleted and caches are emptied
  when the trial ends; folders of trials killed hard are removed by the next trial on the node.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import ray
import ray.tune
import torch

from trainables.callbacks import Callback
from trainables.checkpoint import restore_newest_intact
from trainables.config import TUNE_KEY, TrialConfig
from trainables.failures import FailedForGood, classify, mark_failed, read_mark
from trainables.scratch import scratch_dir
from trainables.tracked_run import TRACKING_DIR, run_tracked
from trainables.vocabulary import GRID_AXES, trial_key


class TuneReporter(Callback):
    """Reports each epoch to Ray Tune with the checkpoint folder; the end only once asked.

    The final report (done=True) must come after the MLflow run is finished: Tune may end the
    trial, and the driver its whole Ray, as soon as it sees it, and a run left RUNNING in MLflow
    is what this avoids. So `on_train_end` keeps the final metrics and `report_final` sends them.
    """

    def __init__(self) -> None:
        self.final: tuple[dict[str, float], Path] | None = None
        self.last_epoch: int | None = None

    def on_epoch_end(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        self.last_epoch = int(metrics["epoch"])
        self._report({**metrics, "done": False, **_tracking(checkpoint_dir)}, checkpoint_dir)

    def on_train_end(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        self.final = ({**metrics, "epoch": metrics["epochs_run"], "done": True}, checkpoint_dir)

    def report_final(self) -> None:
        if self.final is None:
            return
        metrics, checkpoint_dir = self.final
        try:
            # After the tracker's finish: what is pending now was kept in the outbox.
            self._report({**metrics, **_tracking(checkpoint_dir)}, checkpoint_dir)
        except SystemExit as stop:
            # Tune answers done=True by ending the training thread with SystemExit(0) inside
            # report(): the run is complete, not killed.
            if stop.code not in (0, None):
                raise

    @staticmethod
    def _report(metrics: dict[str, float], checkpoint_dir: Path) -> None:
        checkpoint = ray.tune.Checkpoint.from_directory(str(checkpoint_dir))
        ray.tune.report({**metrics, "threads": torch.get_num_threads()}, checkpoint=checkpoint)


def _tracking(checkpoint_dir: Path) -> dict[str, int]:
    """MLflow records not delivered yet (an outage; the driver warns once per outage)."""
    from trainables.journal import pending_records

    journal = checkpoint_dir / TRACKING_DIR
    return {"tracking_pending": pending_records(journal)} if journal.is_dir() else {}


def trial_cpus() -> int | None:
    """CPUs Ray assigned to this trial (None outside Ray or without a CPU request)."""
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not inside a Ray worker
        return None
    return max(1, int(cpus)) if cpus else None


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one QAT run, restored from Tune's checkpoint when present."""
    with scratch_dir(_scratch_name(config)) as work:
        checkpoint_dir = work / "checkpoint"
        reporter = TuneReporter()
        try:
            trial = TrialConfig.from_tune(config)
            cpus = trial_cpus()
            if cpus is not None:
                torch.set_num_threads(cpus)
            restored = ray.tune.get_checkpoint()
            if restored is not None:
                restore_newest_intact(tune_checkpoints(restored), checkpoint_dir)
                fail_if_marked(checkpoint_dir)
            run_tracked(trial, checkpoint_dir, callbacks=[reporter])  # the MLflow run ends here
        except Exception as exc:
            end_for_good(exc, checkpoint_dir, reporter)
            raise
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        reporter.report_final()


def _scratch_name(config: dict[str, Any]) -> str:
    """A readable prefix for the trial's scratch folder: its grid point, read before the config
    is validated (a config that fails validation still gets a folder, to report from)."""
    fields = config.get(TUNE_KEY)
    if not isinstance(fields, dict) or not all(axis in fields for axis in GRID_AXES):
        return "trial"
    return trial_key(*(fields[axis] for axis in GRID_AXES))


def tune_checkpoints(newest: ray.tune.Checkpoint) -> list[tuple[str, Any]]:
    """(name, fetch) of the trial's checkpoints, newest first: the one Tune restores, then the
    older ones it still keeps beside it (CheckpointConfig.num_to_keep), to fall back on."""
    import pyarrow.fs as pafs

    fs, path = newest.filesystem, newest.path.rstrip("/")
    parent, name = path.rsplit("/", 1)
    prefix = name.rstrip("0123456789")  # checkpoint_000003 -> checkpoint_
    infos = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    older = sorted(
        (
            i.path
            for i in infos
            if i.type == pafs.FileType.Directory
            and i.base_name.startswith(prefix)
            and i.base_name < name
        ),
        reverse=True,
    )

    def fetch(checkpoint: ray.tune.Checkpoint):
        return lambda target: checkpoint.to_directory(str(target))

    return [(path, fetch(newest))] + [
        (p, fetch(ray.tune.Checkpoint(p, filesystem=fs))) for p in older
    ]


def fail_if_marked(checkpoint_dir: Path) -> None:
    """A restored checkpoint marked failed for good (trainables.failures): fail at once."""
    mark = read_mark(checkpoint_dir)
    if mark is not None and not mark.retryable:
        raise FailedForGood(f"{mark.reason} (an earlier attempt failed for good: not retried)")


def end_for_good(exc: Exception, checkpoint_dir: Path, reporter: TuneReporter) -> None:
    """A failure a retry cannot fix: mark the checkpoint and report it to Tune, so that a retry
    (Ray's, or `sweep resume`'s) restores the mark and fails at once instead of training."""
    failure = classify(exc)
    if failure.retryable or isinstance(exc, FailedForGood):
        return
    mark_failed(checkpoint_dir, failure)
    result = {"done": False, "failure_reason": failure.reason, "failure_kind": failure.kind}
    if reporter.last_epoch is not None:
        result["epoch"] = reporter.last_epoch
    TuneReporter._report(result, checkpoint_dir)
