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

A Ray trial carries its whole TrialConfig, the sweep's tracking settings included
(`TrialConfig.to_tune()`; an Optuna sample's values and `sample_suffix` merged on top), and
everything that reads a trial (the trainable, the trial names, the ledger and progress callbacks)
reads it back as a TrialConfig. The driver records every trial that ends in the ledger as it
ends, so killing the driver at any point loses nothing that finished. One driver runs a sweep at a
time: it holds the sweep's lock (`sweep.lock`) from before its first write to its exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sweep import stopping
from sweep.ledger import FINISHED, Ledger
from sweep.lock import acquire
from sweep.plan import Plan, PlannedTrial, expand
from sweep.spec import SearchParam, SearchSpec, SpecError, SweepSpec, resolve_storage, spec_to_yaml
from sweep.stopping import graceful_stop
from sweep.storage import SweepStore, filesystem_for
from sweep.sync import keep_parent_status, outbox_uri, short_http_retries, sync_outbox
from trainables.config import TUNE_KEY, TrackingConfig, TrialConfig
from trainables.vocabulary import sample_suffix

TRAINABLE_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}


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
    """data.path is a kaggle_3m folder with patients in it (listed only: no slice is decoded)."""
    if spec.data.path is None:
        return
    from trainables.lgg import scan

    problems = scan(Path(spec.data.path).expanduser()).problems
    if problems:
        more = f" (and {len(problems) - 1} more: run `sweep data check`)" if problems[1:] else ""
        raise SpecError(f"data.path: {problems[0]}{more}")


def check_storage(spec: SweepSpec) -> None:
    """A local storage folder can be created and written (probed with an empty folder, removed
    at once: permission bits alone do not tell, e.g. for root or a read-only mount)."""
    root = spec.resolved_storage()
    if "://" in root:
        return  # an object store: the lock is its first write, and says if it fails
    target = Path(root) / spec.name
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise SpecError(f"storage: {root!r}: {existing} is not a folder")
    import tempfile

    try:
        Path(tempfile.mkdtemp(prefix=".sweep-probe-", dir=existing)).rmdir()
    except OSError as err:
        raise SpecError(f"storage: {root!r} is not writable ({existing}: {err.strerror})") from None


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """An HTTP tracking server answers within `timeout` seconds (MLflow's own client retries for
    minutes before it gives up); a sqlite store's folder exists."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise SpecError(f"tracking_uri: {uri}: folder {folder} does not exist")
        return
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy, an old server without /health): reachable
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise SpecError(
            f"tracking_uri: MLflow server {uri} unreachable ({reason}); start it, or point "
            "tracking_uri / MLFLOW_TRACKING_URI at a running one"
        ) from None


def check_resources(spec: SweepSpec) -> None:
    """Some node of the Ray cluster (or a node type its autoscaler may add) can hold one trial;
    else name the resource, what was asked, and what the largest node has."""
    nodes = _node_shapes()
    asked = {"CPU": spec.resources.cpus_per_trial, "GPU": spec.resources.gpus_per_trial}
    if any(all(node.get(k, 0) >= v for k, v in asked.items()) for node in nodes):
        return
    field = {"CPU": "cpus_per_trial", "GPU": "gpus_per_trial"}
    sizes = ", ".join(f"{n.get('CPU', 0):g} CPUs/{n.get('GPU', 0):g} GPUs" for n in nodes)
    for kind, value in asked.items():
        largest = max((node.get(kind, 0) for node in nodes), default=0)
        if value > largest:
            raise SpecError(
                f"resources.{field[kind]}: {value:g} {kind}s per trial asked, but the largest "
                f"node of this Ray cluster has {largest:g} ({len(nodes)} node(s): {sizes})"
            )
    raise SpecError(
        f"resources: no node has {asked['CPU']:g} CPUs and {asked['GPU']:g} GPUs at once "
        f"(nodes: {sizes})"
    )


def _node_shapes() -> list[dict[str, float]]:
    """The resources of each live node, and of each node type an autoscaler may start."""
    import ray

    shapes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    try:  # private, but what Ray Train and Ray Data read for the same purpose
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - no autoscaler information: judge by live nodes
        config = None
    if config is not None:
        shapes += [dict(g.resources) for g in config.node_group_configs if g.max_count != 0]
    return shapes


# --------------------------------------------------------------------------- tracking


def _start_parent_run(uri: str, spec: SweepSpec, plan: Plan) -> str | None:
    import sweep
    from trainables.tracking import start_sweep_run

    tags = {
        "sweep": spec.name,
        "git_sha": _git_sha() or "unknown",
        "package_version": sweep.__version__,
    }
    params = {"trials": len(plan.trials), "storage": spec.resolved_storage()}
    run_id = start_sweep_run(uri, spec.name, tags=tags, params=params)
    _log_parent_artifacts(uri, run_id, spec, plan)
    return run_id


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


def trial_tracking(
    spec: SweepSpec, store: SweepStore, uri: str, parent_run_id: str | None
) -> TrackingConfig:
    """Where and what every trial of the sweep logs: its part of each trial's config."""
    return TrackingConfig(
        tracking_uri=uri,
        experiment=spec.name,
        parent_run_id=parent_run_id,
        log_weights=spec.log_weights,
        outbox=outbox_uri(store),
        outbox_endpoint=spec.storage_endpoint,
        finish_timeout_s=spec.failure.tracking_wait_s,
        **spec.tracking.model_dump(),  # system metrics
    )


def _tune_fields(trial: PlannedTrial, tracking: TrackingConfig) -> dict:
    """What one Ray trial carries: its config, with the sweep's tracking (TrialConfig.to_tune)."""
    return trial.config.model_copy(update={"tracking": tracking}).to_tune()


def _init_ray(address: str | None) -> bool:
    """Connect to `address`, or start the embedded Ray; True if this call started one."""
    # Trials checkpoint every epoch by design; Tune's warning about frequent experiment-state
    # snapshots would otherwise print a paragraph per epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not address:
        _secure_embedded_ray()  # before `import ray`: Ray reads these at import
    import ray

    if ray.is_initialized():
        return False
    # Inside a Jobs-API job these variables are already in the job's runtime env, which Ray
    # refuses to merge with the same keys again: only ask for what this process lacks.
    missing = {k: v for k, v in TRAINABLE_ENV.items() if os.environ.get(k) != v}
    runtime_env = {"env_vars": missing} if missing else None
    if address:  # a cluster: its auth settings (RAY_AUTH_MODE, the token) come from the env
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        return False
    ray.init(include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
    _guard_ray_processes()
    return True


def _secure_embedded_ray() -> None:
    """The embedded Ray is reachable from this machine only, and asks for a token.

    Listeners: Ray binds every server to the node's IP address, and `ray.init()` turns 127.0.0.1
    into the machine's external address, except with multi-node clusters off (its setting on
    macOS/Windows), where the node's address is the loopback one and the gRPC servers, the agents
    and the workers listen on 127.0.0.1 only. The embedded Ray never has another node.

    Token auth: Ray 2.60's default for a new local cluster, kept unless RAY_AUTH_MODE says
    otherwise. The token is made per driver and passed to Ray's processes in their environment
    (it is never written to disk), unless one is given by RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH.
    """
    import secrets

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray._private.ray_constants" in sys.modules:  # imported already (e.g. by a callback)
        sys.modules["ray._private.ray_constants"].ENABLE_RAY_CLUSTER = False
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    given = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    if os.environ["RAY_AUTH_MODE"] == "token" and not given:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def _guard_ray_processes() -> None:
    """Have every Ray process started here stopped when this process ends, however it ends."""
    from sweep.guard import start_guard

    start_guard()


def _run_config(spec: SweepSpec, store: SweepStore, experiment: str, keys: list[str]):
    from ray import tune

    from sweep.outage import TrackingOutageCallback
    from sweep.progress import LedgerCallback, ProgressCallback, StopCallback
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
            ProgressCallback(total=len(keys), pending_after=spec.resources.pending_warning_s),
            StopCallback(),
            TrackingOutageCallback(resolve_tracking_uri(spec.tracking_uri), outbox_uri(store)),
        ],
        verbose=0,
    )


def _trial_name(trial) -> str:
    """Grid trials are named by their trial key; Optuna samples by that key and their values."""
    return TrialConfig.from_tune(trial.config).run_key


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


def _fit_new(spec, store, trials: list[PlannedTrial], tracking: TrackingConfig) -> None:
    from ray import tune

    keys = [t.key for t in trials]
    experiment = store.new_experiment(keys)
    configs = [_tune_fields(t, tracking) for t in trials]
    tuner = tune.Tuner(
        _trainable(spec),
        param_space={TUNE_KEY: tune.grid_search(configs)},
        tune_config=_tune_config(spec),
        run_config=_run_config(spec, store, experiment, keys),
    )
    if _all_ended(_fit(tuner)):
        store.mark_complete(experiment)


def _fit(tuner):
    """`tuner.fit()`; SweepInterrupted if a stop signal came meanwhile (the state is saved)."""
    from sweep.stopping import fitting

    with fitting():
        return tuner.fit()


def _all_ended(results) -> bool:
    """Did every trial finish or fail for good? Only then is its experiment marked complete: a
    trial still pending or running (a forced stop, a lost node) is resumed from its checkpoint by
    the next `sweep run/resume`, which restores the experiments not marked complete."""
    return results.num_terminated + results.num_errors == len(results)


@dataclass(frozen=True)
class OptunaSpace:
    """Optuna's define-by-run space of a study: samples `space` into the trial's config fields and
    names the sample by the values it sampled (`TrialConfig.sample_suffix`, merged on top too)."""

    space: dict[str, SearchParam]

    def __call__(self, trial) -> dict[str, str]:
        # Names "trial/<field>": Ray Tune merges them into the config's TUNE_KEY dict.
        sampled = {name: _suggest(trial, f"{TUNE_KEY}/{name}", p) for name, p in self.space.items()}
        return {f"{TUNE_KEY}/sample_suffix": sample_suffix(sampled)}


def _suggest(trial, name: str, p: SearchParam):
    if p.type == "loguniform":
        return trial.suggest_float(name, p.low, p.high, log=True)
    if p.type == "uniform":
        return trial.suggest_float(name, p.low, p.high)
    if p.type == "int":
        return trial.suggest_int(name, int(p.low), int(p.high))
    return trial.suggest_categorical(name, p.values)


def _fit_search(spec, store, trial: PlannedTrial, tracking: TrackingConfig) -> None:
    """One Optuna study for one grid point: `num_samples` trials of sampled protocol settings.

    Each sample is its own trial (own checkpoint, own MLflow run, named by its run key:
    `<trial key>-<hash of its values>`); the grid point is FINISHED in the ledger once its study
    is, with the best sample's metrics.
    """
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    s = spec.search
    experiment = store.new_experiment([trial.key])
    searcher = OptunaSearch(OptunaSpace(s.space), metric=s.metric, mode=s.mode, seed=s.seed)
    tuner = tune.Tuner(
        _trainable(spec),
        param_space={TUNE_KEY: _tune_fields(trial, tracking)},
        tune_config=_tune_config(spec, search_alg=searcher, num_samples=s.num_samples),
        run_config=_run_config(spec, store, experiment, [trial.key]),
    )
    results = _fit(tuner)
    if _all_ended(results):
        _record_study(store, trial, results, s)
        store.mark_complete(experiment)


def _record_study(store, trial: PlannedTrial, results, search: SearchSpec) -> None:
    ledger = Ledger.load(store)
    try:
        best = results.get_best_result(metric=search.metric, mode=search.mode)
    except RuntimeError:  # no sample reported the metric: every sample failed
        error = "no Optuna sample reported " + search.metric
        ledger.record_trial(trial.config, "FAILED", error=error)
    else:
        metrics = {k: v for k, v in best.metrics.items() if isinstance(v, int | float)}
        metrics |= {f"best_{k}": best.config[TUNE_KEY][k] for k in search.space}
        ledger.record_trial(trial.config, FINISHED, metrics=metrics)
    ledger.save()


def _interrupted_experiment(store: SweepStore) -> str | None:
    """The last experiment of this sweep, if the driver never saw it complete."""
    experiments = store.experiments()
    if not experiments:
        return None
    last = experiments[-1]
    if store.is_complete(last) or store.trial_keys(last) is None:
        return None
    return last


def _fit_restored(spec, store, experiment: str, plan_trials: dict[str, PlannedTrial]) -> set[str]:
    from ray import tune

    keys = store.trial_keys(experiment) or []
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
    results = _fit(tuner)
    if not _all_ended(results):
        return set(keys)
    if spec.search is not None and keys and keys[0] in plan_trials:  # an Optuna study
        _record_study(store, plan_trials[keys[0]], results, spec.search)
    store.mark_complete(experiment)
    return set(keys)


# --------------------------------------------------------------------------- the entry point


def run_sweep(spec: SweepSpec, *, address: str | None = None) -> SweepOutcome:
    """Run what is left of the sweep. Raises, with nothing written: SpecError (bad input, a
    request no node can hold, storage or tracking out of reach), ConfigConflict, LockHeld (another
    driver runs it). Raises SweepInterrupted on Ctrl-C/SIGTERM, once every trial's state is saved.
    """
    plan = expand(spec)
    check_data(spec)
    check_storage(spec)
    tracking_uri = _tracking_uri(spec)
    store = open_store(spec)
    # Read-only checks first: a refused run leaves nothing behind.
    Ledger.load(store).check_conflicts(
        {t.key: (t.config.config_hash, t.config.to_dict()) for t in plan.trials}
    )
    new_dirs = _missing_dirs(store)
    with graceful_stop():
        try:
            with acquire(store) as lock:  # one driver per sweep: LockHeld names the running one
                lock.on_lost = _stop_on_lost_lock
                return _run_locked(spec, plan, store, address, tracking_uri)
        finally:
            _remove_if_empty(store, new_dirs)  # refused before its first write: leave no folder


def _stop_on_lost_lock(other) -> None:
    """An object store's lock was overwritten (see sweep.lock): stop as on SIGTERM, saving state."""
    import signal

    who = other.describe() if other else "nobody (the lock file is gone)"
    print(f"warning: the sweep's lock is now held by {who}: stopping", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)


def _tracking_uri(spec: SweepSpec) -> str:
    from trainables.tracking import resolve_tracking_uri

    try:
        uri = resolve_tracking_uri(spec.tracking_uri)
    except ValueError as err:
        raise SpecError(f"tracking_uri: {err}") from None
    check_tracking(uri)
    return uri


def _missing_dirs(store: SweepStore) -> list[str]:
    """The sweep's folder and those above it that do not exist yet, deepest first."""
    import pyarrow.fs as pafs

    missing, path = [], store.root
    while path and store.fs.get_file_info(path).type == pafs.FileType.NotFound:
        missing.append(path)
        path = path.rsplit("/", 1)[0] if "/" in path.strip("/") else ""
    return missing


def _remove_if_empty(store: SweepStore, dirs: list[str]) -> None:
    """Remove the folders this run created, if nothing but its (released) lock was in them."""
    import pyarrow.fs as pafs

    for path in dirs:
        if store.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
            return
        with contextlib.suppress(OSError):
            store.fs.delete_dir(path)


def _run_locked(
    spec: SweepSpec, plan: Plan, store: SweepStore, address: str | None, tracking_uri: str
) -> SweepOutcome:
    ledger = Ledger.load(store)
    pending = [t for t in plan.trials if not ledger.finished(t.key, t.config.config_hash)]
    ray_started = False
    try:
        if pending:
            ray_started = _init_ray(address)
            stopping.install()  # ray.init() replaced the SIGTERM handler
            check_resources(spec)  # before the first write
            if address:  # a cluster: refuse storage or tracking its nodes do not all share
                from sweep.cluster import check_cluster_spec, ray_nodes_alive

                check_cluster_spec(spec, ray_nodes_alive())
        return _run_trials(spec, plan, store, tracking_uri, pending)
    finally:
        if ray_started:
            import ray

            ray.shutdown()


def _run_trials(
    spec: SweepSpec, plan: Plan, store: SweepStore, tracking_uri: str, pending: list
) -> SweepOutcome:
    store.write_text(spec_to_yaml(spec), store.SPEC_FILE)
    _print_sync(spec.name, sync_outbox(store))  # records kept during an earlier outage
    parent_run_id = _start_parent_run(tracking_uri, spec, plan)
    _describe(spec, plan, store, tracking_uri, parent_run_id)
    tracking = trial_tracking(spec, store, tracking_uri, parent_run_id)
    outcome = SweepOutcome(
        spec.name,
        len(plan.trials),
        0,
        storage=store.storage_uri,
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
    )
    outcome.skipped = len(plan.trials) - len(pending)
    if outcome.skipped:
        print(
            f"{outcome.skipped} of {len(plan.trials)} trials already finished: skipped", flush=True
        )

    try:
        if pending:
            _fit_pending(spec, plan, store, pending, tracking)
    except stopping.SweepInterrupted:
        _finish_parent_run(store, tracking_uri, parent_run_id, ok=False, status="KILLED")
        raise

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


def _fit_pending(
    spec, plan: Plan, store: SweepStore, pending: list, tracking: TrackingConfig
) -> None:
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


def _finish_parent_run(
    store: SweepStore, uri: str, run_id: str | None, *, ok: bool, status: str | None = None
) -> None:
    if run_id is None:
        return
    from mlflow.tracking import MlflowClient

    status = status or ("FINISHED" if ok else "FAILED")
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
    from sweep.spec import stored_spec

    root = resolve_storage(storage)
    store = SweepStore.open(root, name)
    if not store.exists(store.SPEC_FILE):
        known = ", ".join(store_names(root)) or "none"
        raise SpecError(f"no sweep named {name!r} in storage {root!r} (sweeps there: {known})")
    spec = stored_spec(store)
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
