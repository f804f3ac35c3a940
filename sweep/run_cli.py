"""Handlers of the sweep-level commands: plan, run, resume, status, submit, logs, stop."""

from __future__ import annotations

import json
import sys

from sweep.spec import SpecError, load_spec, resolve_storage


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _storage_root(args) -> str:
    return resolve_storage(args.storage)


def plan(args) -> int:
    from sweep.plan import expand

    try:
        spec = load_spec(args.spec)
        p = expand(spec)
    except (SpecError, ValueError) as err:
        return _fail(str(err))
    if args.json:
        payload = {
            "name": spec.name,
            "trials": p.to_rows(),
            "counts": p.counts(),
            "estimated_gpu_hours": round(p.estimated_gpu_hours(), 3),
        }
        print(json.dumps(payload, indent=1))
        return 0
    print(f"sweep {spec.name}: {len(p.trials)} trials")
    for axis, counts in p.counts().items():
        print(f"  {axis:7} " + ", ".join(f"{value} ({n})" for value, n in counts.items()))
    print(
        f"  estimated cost: {p.estimated_gpu_hours():.1f} GPU-hours "
        "(paper-calibrated: 9 GPU-min per 100 epochs at 256 px)"
    )
    if spec.search:
        print(
            f"  optuna: {spec.search.num_samples} samples per grid point, "
            f"{spec.search.mode} {spec.search.metric}"
        )
    limit = len(p.trials) if args.all else min(len(p.trials), 20)
    for t in p.trials[:limit]:
        print(f"  {t.key}  {t.config.config_hash[:12]}")
    if limit < len(p.trials):
        print(f"  ... {len(p.trials) - limit} more (--all to list every trial)")
    return 0


def _report(outcome) -> int:
    from sweep.runner import print_outcome

    print_outcome(outcome)
    return 0 if outcome.ok else 1


def run(args) -> int:
    from sweep.runner import run_sweep

    try:
        spec = load_spec(args.spec)
    except SpecError as err:
        return _fail(str(err))
    return _drive(lambda: run_sweep(spec, address=args.address), source=args.spec)


def resume(args) -> int:
    from sweep.runner import resume_sweep

    return _drive(lambda: resume_sweep(args.name, _storage_root(args), address=args.address))


def _drive(start, source: str | None = None) -> int:
    """Run a sweep; exit codes: 0 every trial finished, 1 some did not, 2 refused before
    anything was written (bad input, another driver, a request no node can hold), 130/143
    stopped by SIGINT/SIGTERM with every finished epoch kept (`sweep resume NAME` continues)."""
    from sweep.ledger import ConfigConflict
    from sweep.lock import LockHeld
    from sweep.stopping import EXIT_CODES, SweepInterrupted
    from trainables.config import ConfigError

    try:
        outcome = start()
    except ConfigError as err:  # protocol settings that make no valid trial
        return _fail(f"{source}: {err}" if source else str(err))
    except (SpecError, ConfigConflict, LockHeld) as err:
        return _fail(str(err))
    except SweepInterrupted as stop:
        print(
            f"sweep stopped ({stop}); every finished epoch is kept: continue it with "
            "`sweep resume NAME` (or `sweep run SPEC`)",
            file=sys.stderr,
        )
        return EXIT_CODES.get(stop.signum, 130)
    return _report(outcome)


def status(args) -> int:
    if args.address:
        from sweep.jobs import job_status

        return _job_command(args, lambda: print(job_status(args.address, args.name)))
    from sweep.status import format_status, sweep_status
    from sweep.storage import SweepStore
    from sweep.sync import sync_outbox

    root = _storage_root(args)
    store = SweepStore.open(root, args.name)
    if not store.exists(store.SPEC_FILE):
        return _fail(f"no sweep named {args.name!r} in storage {root!r}")
    try:
        synced = sync_outbox(store)  # records kept during an outage: delivered if MLflow is back
        rows = sweep_status(store)
    except SpecError as err:  # e.g. a corrupt ledger, named
        return _fail(str(err))
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=1))
    else:
        print(format_status(args.name, rows))
        if synced.summary(args.name):
            print(synced.summary(args.name))
        _print_driver(store)
    return 0


def _print_driver(store) -> None:
    from sweep.lock import holder

    running = holder(store)  # read from the lock file; never takes the lock
    print(f"driver: {running.describe()}" if running else "driver: none running")


def submit(args) -> int:
    from sweep.cluster import alive_nodes, check_cluster_spec
    from sweep.jobs import ClusterError, talking_to, wait
    from sweep.jobs import submit as submit_job

    try:
        spec = load_spec(args.spec)
        with talking_to(args.address):
            # Refuse here what the driver would refuse there: storage or tracking in files of one
            # machine on a cluster of several (what the spec leaves unset, the cluster decides).
            check_cluster_spec(spec, alive_nodes(args.address), resolve=False)
            job_id = submit_job(spec, args.address)
    except (SpecError, ClusterError) as err:
        return _fail(str(err))
    print(f"submitted {job_id} to {args.address}")
    print(f"follow it with: sweep logs {spec.name} --address {args.address}")
    if args.wait:
        try:
            with talking_to(args.address):
                final = wait(args.address, job_id, timeout=args.timeout)
        except ClusterError as err:
            return _fail(str(err))
        print(f"job {job_id}: {final}")
        return 0 if final == "SUCCEEDED" else 1
    return 0


def _job_command(args, action) -> int:
    """Run `action()` against the cluster at args.address; its errors exit 2 with the reason."""
    from sweep.jobs import ClusterError, talking_to

    try:
        with talking_to(args.address):
            action()
    except (LookupError, ClusterError, SpecError) as err:
        return _fail(str(err).strip("'\""))
    return 0


def logs(args) -> int:
    from sweep.jobs import job_logs

    return _job_command(args, lambda: print(job_logs(args.address, args.name), end=""))


def stop(args) -> int:
    from sweep.jobs import stop_job

    return _job_command(args, lambda: print(f"stopping {stop_job(args.address, args.name)}"))
