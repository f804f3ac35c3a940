"""Per-epoch wall time through Ray Tune vs the same loop without Ray (target: <= 5% overhead).

For the tiny and the 4m CNN on a scaled-down synthetic dataset (64 px; LGG at 256 px would take
hours on a CPU), the same TrialConfig runs
  - directly: trainables.loop.train in this process, torch on 2 threads;
  - through Ray Tune: train_trial as a one-trial Tuner with 2 CPUs (so torch gets 2 threads).
An epoch's wall time is the time between two consecutive epoch reports: training, validation,
the checkpoint write, and for Ray the report that persists the checkpoint into Tune's storage.
It is measured the same way on both sides (a loop callback / Tune's time_this_iter_s) and
averaged over epochs 2.. (epoch 1 pays imports and warm-up). The direct run goes first and
again last, and its mean is compared with Ray's, so a drift of a shared machine shows as the
gap between the two direct runs.

    .venv/bin/python -m bench.bench_trainable [epochs]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainables.callbacks import Callback

EPOCHS = 5
THREADS = 2


def config_for(scale: str, cache_dir: Path, epochs: int):
    from trainables.config import TrialConfig

    return TrialConfig.from_fields(
        {
            "arch": "cnn",
            "scale": scale,
            "recipe": "baseline",
            "seed": 2026,
            "synthetic": {"patients": 10, "size": 64, "seed": 0, "slices_per_patient": 8},
            "image_size": 64,
            "epochs": epochs,
            "batch_size": 16,
            "cache_dir": str(cache_dir),
        }
    )


class EpochClock(Callback):
    """Loop callback: wall time between consecutive epoch reports (and the loop's own
    train + validate time, `epoch_time_s`)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.times: list[float] = []
        self.compute: list[float] = []

    def on_epoch_end(self, metrics, checkpoint_dir) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.compute.append(metrics["epoch_time_s"])
        self.last = now


def direct(config, work: Path) -> tuple[list[float], list[float]]:
    from trainables.loop import train

    torch.set_num_threads(THREADS)
    clock = EpochClock()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        train(config, checkpoint_dir=Path(tmp) / "checkpoint", callbacks=[clock])
    return clock.times, clock.compute


def through_ray(config, work: Path) -> tuple[list[float], list[float]]:
    from ray import tune

    from trainables.config import TUNE_KEY
    from trainables.trainable import train_trial

    times: list[float] = []
    compute: list[float] = []

    class Clock(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not result.get("done"):
                times.append(result["time_this_iter_s"])
                compute.append(result["epoch_time_s"])

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tuner = tune.Tuner(
            tune.with_resources(train_trial, {"cpu": THREADS}),
            param_space={TUNE_KEY: config.to_tune()},
            run_config=tune.RunConfig(storage_path=tmp, callbacks=[Clock()], verbose=0),
        )
        result = tuner.fit()
        if result.errors:
            raise RuntimeError(result.errors)
    return times, compute


def mean_after_first(times: list[float]) -> float:
    return statistics.fmean(times[1:])


def main() -> None:
    import ray

    epochs = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else EPOCHS
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(tempfile.mkdtemp(prefix="bench_trainable-"))
    ray.init(num_cpus=THREADS, include_dashboard=False, log_to_driver=False)
    try:
        print(f"{epochs} epochs, 64 px synthetic data (80 slices), batch 16, {THREADS} threads")
        print("s/epoch: wall time between epoch reports (in brackets: train + validate alone)")
        print(f"{'model':<9} {'direct':>15} {'ray':>15} {'overhead':>9}  direct 1st / 2nd run")
        for scale in ("tiny", "4m"):
            config = config_for(scale, work / "cache", epochs)
            first, first_compute = direct(config, work)
            ray_wall, ray_compute = through_ray(config, work)
            last, last_compute = direct(config, work)
            wall = (mean_after_first(first) + mean_after_first(last)) / 2
            compute = (mean_after_first(first_compute) + mean_after_first(last_compute)) / 2
            ray_time = mean_after_first(ray_wall)
            print(
                f"cnn-{scale:<5} {wall:>7.3f} ({compute:>5.3f}) "
                f"{ray_time:>7.3f} ({mean_after_first(ray_compute):>5.3f}) "
                f"{100 * (ray_time / wall - 1):>8.1f}%  "
                f"{mean_after_first(first):.3f} / {mean_after_first(last):.3f}",
                flush=True,
            )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
