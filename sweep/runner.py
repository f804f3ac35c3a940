"""Run a sweep on Ray Tune: plan, skip what is done, resume what was interrupted, run the rest.

`run_sweep(spec)` is idempotent. In order:

1. Expand the spec into trials; refuse to start if a finished trial's result-affecting settings
   changed (ledger), or if the data folder is missing.
2. Open (or reuse) the sweep's parent MLflow run and log the spec and the plan to it.
3. If the last Ray Tune experiment of this sweep was interrupted (driver killed, machine lost), it
   is restored with `Tuner.restore`: finished trials stay finished, interrupted and errored ones
   continue from their last checkpoint (the trainable reads `ray.tune.get_checkpoint()`).
4. Trials of the plan that are neither finished nor in that experiment (new seeds or recipes added
   to the spec) run in a new experiment.

The driver records every trial that ends in the ledger as it ends, so killing the driver at any
point loses nothing that finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sweep.ledger import FINISHED, Ledger
from sweep.plan import Plan, PlannedTrial, expand
from sweep.spec import SpecError, SweepSpec, resolve_storage, spec_to_yaml
from sweep.storage import SweepStore, filesystem_for
from sweep.sync import keep_parent_status, outbox_uri, short_http_retries, sync_outbox

TRAINABLE_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
COMPLETE_MARKER = ".complete"
KEYS_FILE = ".trial_keys.json"
DRIVER_FILE = "driver.json"  # who is running the sweep: `sweep status` tells running from killed


def _driver_record() -> dict:
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


@dataclass
class SweepOutcome:
    name: str
    planned: int
    skipped: int
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    storage: str = ""
    tracking_uri: str = ""
    parent_run_id: str | None = None
    report: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


def open_store(spec: SweepSpec) -> SweepStore:
    return SweepStore.open(spec.resolved_storage(), spec.name, spec.storage_endpoint)


def check_data(spec: SweepSpec) -> None:
    if spec.data.path is not None and not Path(spec.data.path).expanduser().is_dir():
        raise SpecError(
            f"data.path: {spec.data.path!r} is not a folder (expected kaggle_3m layout)"
        )


# --------------------------------------------------------------------------- tracking


def _start_parent_run(spec: SweepSpec, plan: Plan) -> tuple[str, str | None]:
    import sweep
    from trainables.tracking import resolve_tracking_uri, start_sweep_run

    uri = resolve_tracking_uri(spec.tracking_uri)
    tags = {
        "sweep": spec.name,
        "git_sha": _git_sha() or "unknown",
        "package_version": sweep.__version__,
    }
    params = {"trials": len(plan.trials), "storage": spec.resolved_storage()}
    run_id = start_sweep_run(uri, spec.name, tags=tags, params=params)
    _log_parent_artifacts(uri, run_id, spec, plan)
    return uri, run_id


def _log_parent_artifacts(uri: str, run_id: str, spec: SweepSpec, plan: Plan) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    client.log_text(run_id, spec_to_yaml(spec), "spec.yaml")
    client.log_text(run_id, json.dumps(plan.to_rows(), indent=1), "plan.json")
    client.log_text(run_id, json.dumps(_package_versions(), indent=1), "versions.json")


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("nvfp4-sweep", "torch", "ray", "mlflow", "albumentations", "optuna", "numpy"):
        with contextlib.suppress(PackageNotFoundError):  # report what is installed
            out[name] = version(name)
    return out


def _git_sha() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# --------------------------------------------------------------------------- Ray Tune


def _trial_payload(trial: PlannedTrial, tracking: dict, spec: SweepSpec) -> dict:
    """What one Ray trial receives: its config and where to track it."""
    return {
        "trial_key": trial.key,
        "trial": trial.config.to_dict(),
        "config_hash": trial.config.config_hash,
        "tracking": tracking,
        "save_weights": spec.save_weights,
    }


def _init_ray(address: str | None) -> None:
    import ray

    # Trials checkpoint every epoch by design; Tune's warning about frequent experiment-state
    # snapshots would otherwise print a paragraph per epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    # Inside a Jobs-API job these variables are already in the job's runtime env, which Ray
    # refuses to merge with the same keys again: only ask for what this process lacks.
    missing = {k: v for k, v in TRAINABLE_ENV.items() if os.environ.get(k) != v}
    runtime_env = {"env_vars": missing} if missing else None
    if address:  # a cluster: its auth settings (RAY_AUTH_MODE, the token) come from the env
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        # The embedded Ray lives and dies with this process and listens on this host only;
        # Ray 2.60 would otherwise generate and demand a token for it.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )


def _run_config(spec: SweepSpec, store: SweepStore, experiment: str, keys: list[str]):
    from ray import tune

    from sweep.outage import TrackingOutageCallback
    from sweep.progress import LedgerCallback, ProgressCallback
    from trainables.tracking import resolve_tracking_uri

    fs, path = filesystem_for(store.tune_uri, spec.storage_endpoint)
    storage_path = store.tune_uri if store.is_local else path
    return tune.RunConfig(
        name=experiment,
        storage_path=storage_path,
        storage_filesystem=None if store.is_local else fs,
        failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[
            LedgerCallback(store),
            ProgressCallback(total=len(keys)),
            TrackingOutageCallback(resolve_tracking_uri(spec.tracking_uri), outbox_uri(store)),
        ],
        verbose=0,
    )


def _trial_name(trial) -> str:
    """Grid trials are named by their trial key; Optuna samples by that key and their values."""
    from trainables.trainable import sampled_trial_key

    key = trial.config["trial"]["trial_key"]
    sampled = {k: v for k, v in trial.config.items() if k != "trial"}
    return sampled_trial_key(key, sampled) if sampled else key


def tune_resources(spec: SweepSpec, trainable):
    """The trainable with the spec's per-trial request; fractional GPUs pack trials onto a GPU."""
    from ray import tune

    resources = {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial}
    return tune.with_resources(trainable, resources)


def _trainable(spec: SweepSpec):
    from trainables.trainable import train_trial

    return tune_resources(spec, train_trial)


def _tune_config(spec: SweepSpec, **kwargs):
    from ray import tune

    return tune.TuneConfig(
        max_concurrent_trials=spec.resources.max_concurrent,
        trial_name_creator=_trial_name,
        trial_dirname_creator=_trial_name,
        **kwargs,
    )


def _fit_new(spec, store, trials: list[PlannedTrial], tracking: dict) -> None:
    from ray import tune

    experiment = f"run-{len(store.list_dirs('tune')) + 1:03d}"
    keys = {t.key: t for t in trials}
    store.write_text(json.dumps(sorted(keys)), "tune", experiment, KEYS_FILE)
    payloads = [_trial_payload(t, tracking, spec) for t in trials]
    tuner = tune.Tuner(
        _trainable(spec),
        param_space={"trial": tune.grid_search(payloads)},
        tune_config=_tune_config(spec),
        run_config=_run_config(spec, store, experiment, list(keys)),
    )
    tuner.fit()
    store.write_text("", "tune", experiment, COMPLETE_MARKER)


def _search_space(spec: SweepSpec) -> dict:
    from ray import tune

    def domain(p):
        if p.type == "loguniform":
            return tune.loguniform(p.low, p.high)
        if p.type == "uniform":
            return tune.uniform(p.low, p.high)
        if p.type == "int":
            return tune.randint(int(p.low), int(p.high) + 1)
        return tune.choice(p.values)

    return {name: domain(p) for name, p in spec.search.space.items()}


def _fit_search(spec, store, trial: PlannedTrial, tracking: dict) -> None:
    """One Optuna study for one grid point: `num_samples` trials of sampled protocol settings.

    Each sample is its own trial (own checkpoint, own MLflow run, named `<trial key>-<hash of
    its values>`); the grid point is FINISHED in the ledger once its study is, with the best
    sample's metrics.
    """
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    s = spec.search
    experiment = f"run-{len(store.list_dirs('tune')) + 1:03d}"
    store.write_text(json.dumps([trial.key]), "tune", experiment, KEYS_FILE)
    payload = _trial_payload(trial, tracking, spec) | {"search": True}
    searcher = OptunaSearch(metric=s.metric, mode=s.mode, seed=s.seed)
    tuner = tune.Tuner(
        _trainable(spec),
        param_space={"trial": payload, **_search_space(spec)},
        tune_config=_tune_config(spec, search_alg=searcher, num_samples=s.num_samples),
        run_config=_run_config(spec, store, experiment, [trial.key]),
    )
    results = tuner.fit()
    _record_study(store, trial, results, s.metric, s.mode)
    store.write_text("", "tune", experiment, COMPLETE_MARKER)


def _record_study(store, trial: PlannedTrial, results, metric: str, mode: str) -> None:
    ledger = Ledger.load(store)
    try:
        best = results.get_best_result(metric=metric, mode=mode)
    except RuntimeError:  # no sample reported the metric: every sample failed
        ledger.record(
            trial.key,
            trial.config.config_hash,
            trial.config.to_dict(),
            "FAILED",
            error="no Optuna sample reported " + metric,
        )
    else:
        metrics = {k: v for k, v in best.metrics.items() if isinstance(v, int | float)}
        metrics |= {f"best_{k}": v for k, v in best.config.items() if k != "trial"}
        ledger.record(
            trial.key, trial.config.config_hash, trial.config.to_dict(), FINISHED, metrics=metrics
        )
    ledger.save()


def _interrupted_experiment(store: SweepStore) -> str | None:
    """The last experiment of this sweep, if the driver never saw it complete."""
    experiments = store.list_dirs("tune")
    if not experiments:
        return None
    last = experiments[-1]
    if store.exists("tune", last, COMPLETE_MARKER) or not store.exists("tune", last, KEYS_FILE):
        return None
    return last


def _fit_restored(spec, store, experiment: str, plan_trials: dict[str, PlannedTrial]) -> set[str]:
    from ray import tune

    keys = json.loads(store.read_text("tune", experiment, KEYS_FILE))
    fs, path = filesystem_for(f"{store.tune_uri}/{experiment}", spec.storage_endpoint)
    exp_path = f"{store.tune_uri}/{experiment}" if store.is_local else path
    if not tune.Tuner.can_restore(exp_path, storage_filesystem=None if store.is_local else fs):
        return set()
    print(f"resuming interrupted experiment {experiment} ({len(keys)} trials)", flush=True)
    tuner = tune.Tuner.restore(
        exp_path,
        _trainable(spec),
        resume_unfinished=True,
        resume_errored=True,
        storage_filesystem=None if store.is_local else fs,
    )
    # The restored RunConfig (callbacks included) is the one pickled when the experiment began.
    results = tuner.fit()
    if spec.search is not None and keys and keys[0] in plan_trials:  # an Optuna study
        _record_study(store, plan_trials[keys[0]], results, spec.search.metric, spec.search.mode)
    store.write_text("", "tune", experiment, COMPLETE_MARKER)
    return set(keys)


# --------------------------------------------------------------------------- the entry point


def run_sweep(spec: SweepSpec, *, address: str | None = None) -> SweepOutcome:
    plan = expand(spec)
    check_data(spec)
    store = open_store(spec)
    ledger = Ledger.load(store)
    ledger.check_conflicts({t.key: (t.config.config_hash, t.config.to_dict()) for t in plan.trials})
    store.write_text(spec_to_yaml(spec), "spec.yaml")

    _print_sync(spec.name, sync_outbox(store))  # records kept during an earlier outage
    tracking_uri, parent_run_id = _start_parent_run(spec, plan)
    _describe(spec, plan, store, tracking_uri, parent_run_id)
    tracking = {
        "uri": tracking_uri,
        "experiment": spec.name,
        "parent_run_id": parent_run_id,
        "outbox": outbox_uri(store),
        "outbox_endpoint": spec.storage_endpoint,
        "finish_timeout_s": spec.failure.tracking_wait_s,
        **spec.tracking.model_dump(),  # system metrics: the trainable passes them on
    }
    outcome = SweepOutcome(
        spec.name,
        len(plan.trials),
        0,
        storage=store.storage_uri,
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
    )
    pending = [t for t in plan.trials if not ledger.finished(t.key, t.config.config_hash)]
    outcome.skipped = len(plan.trials) - len(pending)
    if outcome.skipped:
        print(
            f"{outcome.skipped} of {len(plan.trials)} trials already finished: skipped", flush=True
        )

    if pending:
        _init_ray(address)
        store.write_text(json.dumps(_driver_record()), DRIVER_FILE)
        covered = set()
        interrupted = _interrupted_experiment(store)
        if interrupted:
            covered = _fit_restored(spec, store, interrupted, {t.key: t for t in plan.trials})
        ledger = Ledger.load(store)
        rest = [
            t
            for t in pending
            if t.key not in covered and not ledger.finished(t.key, t.config.config_hash)
        ]
        if rest and spec.search is None:
            _fit_new(spec, store, rest, tracking)
        for trial in rest if spec.search is not None else []:
            _fit_search(spec, store, trial, tracking)

        store.write_text(json.dumps({}), DRIVER_FILE)  # this driver is done
    ledger = Ledger.load(store)
    for t in plan.trials:
        entry = ledger.entries.get(t.key)
        if entry and entry.config_hash == t.config.config_hash and entry.state == FINISHED:
            outcome.finished.append(t.key)
        else:
            outcome.failed.append(t.key)
    _print_sync(spec.name, sync_outbox(store))  # trials that ended during an outage
    _finish_parent_run(store, tracking_uri, parent_run_id, ok=outcome.ok)
    if spec.analyze:
        from sweep.analyze_cli import analyze

        outcome.report = str(analyze(spec.name, tracking_uri=tracking_uri).report)
    _describe(spec, plan, store, tracking_uri, parent_run_id, outcome)
    return outcome


def _describe(spec, plan, store, uri: str, run_id: str, outcome: SweepOutcome | None = None):
    """The experiment's and the parent run's descriptions (sweep.notes), at start and at the end.
    Descriptions are for reading: MLflow down at the end costs one quick try and a warning."""
    from sweep.notes import describe_sweep

    done = {} if outcome is None else {"finished": outcome.finished, "failed": outcome.failed}
    try:
        with short_http_retries():
            describe_sweep(uri, spec, plan, storage=store.storage_uri, parent_run_id=run_id, **done)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(f"tracking: descriptions of {spec.name} not written: {reason}", file=sys.stderr)


def _finish_parent_run(store: SweepStore, uri: str, run_id: str | None, *, ok: bool) -> None:
    if run_id is None:
        return
    from mlflow.tracking import MlflowClient

    status = "FINISHED" if ok else "FAILED"
    try:
        with short_http_retries():
            MlflowClient(uri).set_terminated(run_id, status=status)
    except Exception as exc:  # MLflow unreachable: the status waits in the outbox
        where = keep_parent_status(store, uri, run_id, status)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(f"tracking: the sweep's parent run status ({status}) kept in {where}: {reason}")


def _print_sync(name: str, synced) -> None:
    if synced.summary(name):
        print(synced.summary(name), flush=True)


def resume_sweep(
    name: str, storage: str | None = None, *, address: str | None = None
) -> SweepOutcome:
    """Run again the spec a sweep was last run with, from its storage folder."""
    import yaml

    from sweep.spec import parse_spec

    root = resolve_storage(storage)
    store = SweepStore.open(root, name)
    if not store.exists("spec.yaml"):
        known = ", ".join(store_names(root)) or "none"
        raise SpecError(f"no sweep named {name!r} in storage {root!r} (sweeps there: {known})")
    spec = parse_spec(yaml.safe_load(store.read_text("spec.yaml")), source=store.path("spec.yaml"))
    # The sweep lives where it was found, whatever the saved spec or this shell's env say.
    return run_sweep(spec.model_copy(update={"storage": root}), address=address)


def store_names(root: str) -> list[str]:
    fs, base = filesystem_for(root)
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def print_outcome(outcome: SweepOutcome, out=sys.stdout) -> None:
    print(
        f"sweep {outcome.name}: {len(outcome.finished)}/{outcome.planned} trials finished "
        f"({outcome.skipped} skipped as already done), {len(outcome.failed)} not finished",
        file=out,
    )
    for key in outcome.failed:
        print(f"  not finished: {key}", file=out)
    print(f"storage:  {outcome.storage}", file=out)
    print(f"tracking: {outcome.tracking_uri}  (browse it: sweep ui {outcome.name})", file=out)
    if outcome.report:
        print(f"report:   {outcome.report}", file=out)
