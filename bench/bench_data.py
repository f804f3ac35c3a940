"""Data loading per epoch, with and without the decode-once cache, against one training epoch.

    .venv/bin/python -m bench.bench_data [--patients 110] [--size 256] [--workers 2]
                                         [--train-steps 2] [--data PATH]

1. A synthetic LGG-sized dataset (110 patients, 24-48 slices each, ~3,960 slices at 256 px; or
   `--data` for a real kaggle_3m folder) is written once; the cold cache build is timed.
2. One full training epoch of the holdout train split (88 patients) is drawn through a DataLoader
   (batch 32, shuffled, augmented, `--workers` processes), once from the memory-mapped cache and
   once reading the TIFFs on every access (`cache=False`). Both use identical augmentation.
3. The reference: training steps of the 4m CNN (`models.build_model("cnn", "4m")`, Adamax, the
   paper's BCE + Tversky loss) on batches already in memory, timed for `--train-steps` steps and
   extrapolated to the same epoch (a full CPU epoch takes tens of minutes).

Loading here is timed alone, as a serial cost; in training the workers prefetch while the model
computes, so the figure is the worst case. The paper's runs took about 9 GPU-minutes for at most
100 epochs, i.e. >= ~5 s per GPU epoch: the script also prints loading against that budget.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

PAPER_GPU_EPOCH_S = 9 * 60 / 100  # about 9 GPU-minutes per run of at most 100 epochs


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_data")
    parser.add_argument("--patients", type=int, default=110, help="synthetic patients (LGG: 110)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=2, help="timed CNN training steps")
    parser.add_argument("--data", help="an existing kaggle_3m folder instead of synthetic data")
    return parser.parse_args(argv)


def _timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def load_epoch(dataset, *, batch: int, workers: int) -> float:
    """Seconds to draw one shuffled, augmented epoch of `dataset` through a DataLoader."""
    import torch
    from torch.utils.data import DataLoader

    dataset.set_epoch(0)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - t0


def train_step_seconds(size: int, batch: int, steps: int) -> tuple[float, str]:
    """Seconds per training step of the 4m CNN on in-memory batches (after one warm-up step)."""
    import torch

    try:
        import models

        model, name = models.build_model("cnn", "4m"), "models.build_model('cnn', '4m')"
    except (ImportError, AttributeError, KeyError, ValueError) as exc:
        raise SystemExit(f"bench_data needs models.build_model('cnn', '4m'): {exc}") from exc
    from trainables.losses import bce_tversky

    torch.manual_seed(0)
    optimizer = torch.optim.Adamax(model.parameters(), lr=5e-4)
    x = torch.randn(batch, 3, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.9).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = bce_tversky(model(x), y).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    model.train()
    step()  # warm-up: allocator, kernels
    _, seconds = _timed(lambda: [step() for _ in range(steps)])
    return seconds / steps, name


def _dataset(args, tmp: Path) -> Path:
    if args.data:
        return Path(args.data)
    from trainables.synth import write_synthetic

    root = tmp / "kaggle_3m"
    summary, seconds = _timed(
        lambda: write_synthetic(root, patients=args.patients, size=args.size, seed=0)
    )
    print(
        f"synthetic dataset: {summary.patients} patients, {summary.slices} slices at "
        f"{args.size} px, written in {seconds:.1f} s"
    )
    return root


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv if argv is not None else [])
    from trainables.datasets import build_datasets

    with tempfile.TemporaryDirectory(prefix="bench_data-") as tmp_name:
        tmp = Path(tmp_name)
        root = _dataset(args, tmp)
        common = {"image_size": args.size, "seed": 0}
        cached, build_s = _timed(lambda: build_datasets(root, cache_dir=tmp / "cache", **common))
        _, reopen_s = _timed(lambda: build_datasets(root, cache_dir=tmp / "cache", **common))
        direct, scan_s = _timed(lambda: build_datasets(root, cache=False, **common))
        n = len(cached.train)
        print(
            f"cache: cold build {build_s:.1f} s, warm open {reopen_s:.2f} s; "
            f"uncached set-up (mask scan) {scan_s:.1f} s"
        )

        kwargs = {"batch": args.batch, "workers": args.workers}
        with_cache = load_epoch(cached.train, **kwargs)
        without_cache = load_epoch(direct.train, **kwargs)
        step_s, model_name = train_step_seconds(args.size, args.batch, args.train_steps)
        train_epoch_s = step_s * n / args.batch

    print(f"train split: {n} slices, batch {args.batch}, {args.workers} workers")
    print(f"load one epoch, cache:    {with_cache:7.2f} s ({with_cache / n * 1e3:.2f} ms/slice)")
    print(
        f"load one epoch, no cache: {without_cache:7.2f} s ({without_cache / n * 1e3:.2f} ms/slice)"
    )
    print(f"  no cache / cache: {without_cache / with_cache:.2f}x")
    print(
        f"train one epoch, {model_name}: {train_epoch_s:.0f} s "
        f"(extrapolated from {args.train_steps} steps of {step_s:.2f} s)"
    )
    print(
        f"loading / training epoch: cache {with_cache / train_epoch_s:.1%}, "
        f"no cache {without_cache / train_epoch_s:.1%}"
    )
    gpu = PAPER_GPU_EPOCH_S
    print(
        f"loading / paper's GPU epoch (~{gpu:.1f} s): "
        f"cache {with_cache / gpu:.0%}, no cache {without_cache / gpu:.0%}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
