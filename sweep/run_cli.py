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
    from sweep.ledger import ConfigConflict
    from sweep.runner import run_sweep

    try:
        spec = load_spec(args.spec)
        outcome = run_sweep(spec, address=args.address)
    except (SpecError, ConfigConflict) as err:
        return _fail(str(err))
    return _report(outcome)


def resume(args) -> int:
    from sweep.ledger import ConfigConflict
    from sweep.runner import resume_sweep

    try:
        outcome = resume_sweep(args.name, _storage_root(args), address=args.address)
    except (SpecError, ConfigConflict) as err:
        return _fail(str(err))
    return _report(outcome)


def status(args) -> int:
    if args.address:
        from sweep.jobs import job_status

        try:
            print(job_status(args.address, args.name))
        except LookupError as err:
            return _fail(str(err))
        return 0
    from sweep.status import format_status, sweep_status
    from sweep.storage import SweepStore
    from sweep.sync import sync_outbox

    root = _storage_root(args)
    store = SweepStore.open(root, args.name)
    if not store.exists("spec.yaml"):
        return _fail(f"no sweep named {args.name!r} in storage {root!r}")
    synced = sync_outbox(store)  # records kept during an outage: delivered if MLflow is back
    rows = sweep_status(store)
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=1))
    else:
        print(format_status(args.name, rows))
        if synced.summary(args.name):
            print(synced.summary(args.name))
    return 0


def submit(args) -> int:
    from sweep.jobs import submit as submit_job
    from sweep.jobs import wait

    try:
        spec = load_spec(args.spec)
    except SpecError as err:
        return _fail(str(err))
    job_id = submit_job(spec, args.address)
    print(f"submitted {job_id} to {args.address}")
    print(f"follow it with: sweep logs {spec.name} --address {args.address}")
    if args.wait:
        final = wait(args.address, job_id, timeout=args.timeout)
        print(f"job {job_id}: {final}")
        return 0 if final == "SUCCEEDED" else 1
    return 0


def logs(args) -> int:
    from sweep.jobs import job_logs

    try:
        print(job_logs(args.address, args.name), end="")
    except LookupError as err:
        return _fail(str(err))
    return 0


def stop(args) -> int:
    from sweep.jobs import stop_job

    try:
        print(f"stopping {stop_job(args.address, args.name)}")
    except LookupError as err:
        return _fail(str(err))
    return 0
