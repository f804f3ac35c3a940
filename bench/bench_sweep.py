"""The sweep driver's own costs: planning the paper grid, and Ray Tune's per-trial overhead.

1. `sweep plan` of paper.yaml (960 trials): wall time of expanding and validating every trial
   config, against the time to merely build 960 dicts (the floor).
2. A 200-trial sweep of no-op trials through the same Tuner set-up `sweep run` uses (resources,
   trial naming, the ledger and progress callbacks), on an embedded local Ray: scheduling
   overhead per trial, and the driver's peak memory (RSS) growth. The reference, in the same
   run: the same trials through a bare `tune.Tuner` (default configs, no callbacks, only the
   resource request), so the ratio is what the sweep's own machinery adds to Ray Tune's.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

SPECS = Path(__file__).resolve().parents[1] / "sweep" / "specs"


def bench_plan() -> None:
    from sweep.plan import expand
    from sweep.spec import load_spec

    spec = load_spec(SPECS / "paper.yaml")
    t0 = time.perf_counter()
    plan = expand(spec)
    rows = plan.to_rows()
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    floor = [dict(r) for r in rows]
    floor_s = time.perf_counter() - t0
    print(
        f"plan paper.yaml: {len(plan.trials)} trials in {plan_s * 1e3:.0f} ms "
        f"({plan_s / len(floor) * 1e6:.0f} us/trial; copying the rows: {floor_s * 1e3:.2f} ms)"
    )


def _noop(config):
    from ray import tune

    tune.report({"epoch": 1, "val_auprc": 0.5, "test_auprc": 0.5})


def _fit_bare(n_trials: int, storage: str) -> float:
    from ray import tune

    t0 = time.perf_counter()
    tune.Tuner(
        tune.with_resources(_noop, {"cpu": 0.5}),
        param_space={"i": tune.grid_search(list(range(n_trials)))},
        run_config=tune.RunConfig(storage_path=storage, verbose=0),
    ).fit()
    return time.perf_counter() - t0


def bench_scheduling(n_trials: int = 200) -> None:
    import ray
    from ray import tune

    from sweep.plan import expand
    from sweep.runner import _run_config, _tune_config, open_store, tune_resources
    from sweep.spec import parse_spec
    from trainables.config import TUNE_KEY

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as tmp:
        spec = parse_spec(
            {
                "name": "bench",
                "data": {"synthetic": {"patients": 6, "size": 32}, "image_size": 32},
                "grid": {"arch": ["cnn"], "scale": ["tiny"], "recipe": ["baseline"], "seed": [0]},
                "resources": {"cpus_per_trial": 0.5},
                "storage": tmp,
            }
        )
        store = open_store(spec)
        planned = expand(spec).trials[0].config
        configs = [planned.replace(seed=i) for i in range(n_trials)]
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        bare = _fit_bare(n_trials, str(Path(tmp) / "bare"))
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        tune.Tuner(
            tune_resources(spec, _noop),
            param_space={TUNE_KEY: tune.grid_search([c.to_tune() for c in configs])},
            tune_config=_tune_config(spec),
            run_config=_run_config(spec, store, "bench", [c.trial_key for c in configs]),
        ).fit()
        wall = time.perf_counter() - t0
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ray.shutdown()
    print(
        f"{n_trials} no-op trials (4 slots of 0.5 CPU): bare Tuner {bare:.1f} s "
        f"({bare / n_trials * 1e3:.0f} ms/trial); the sweep's Tuner set-up {wall:.1f} s "
        f"({wall / n_trials * 1e3:.0f} ms/trial), {wall / bare:.2f}x bare; driver peak RSS "
        f"+{(rss1 - rss0) / 1024:.0f} MiB over the sweep set-up (peak {rss1 / 1024:.0f} MiB)"
    )


def main() -> None:
    bench_plan()
    bench_scheduling()


if __name__ == "__main__":
    main()
