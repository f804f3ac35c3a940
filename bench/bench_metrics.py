"""Pixel AUPRC of a whole split: the fp16 histogram (trainables.metrics) vs scikit-learn.

400 slices x 256 x 256 = 26.2 M pixels, the size of an LGG test split at full resolution, with
realistic predictions (mostly confident background, a tumour blob per positive slice, noise).
Ours streams the slices batch by batch as the training loop does (PixelHistogram.update per batch
of 32, then compute); scikit-learn's `average_precision_score` gets the same fp16-rounded
probabilities as one flat array. Both values must be identical (==), and we print the speed-up.

    .venv/bin/python -m bench.bench_metrics
"""

from __future__ import annotations

import time

import numpy as np
import torch

SLICES, SIZE, BATCH = 400, 256, 32


def synthetic_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, masks) of shape (SLICES, 1, SIZE, SIZE), float32."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centres = torch.randint(60, SIZE - 60, (SLICES, 2), generator=g)
    radii = torch.randint(8, 40, (SLICES,), generator=g)
    positive = torch.rand(SLICES, generator=g) < 0.35
    dist2 = (yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2
    masks = ((dist2 <= radii[:, None, None] ** 2) & positive[:, None, None]).float()
    logits = (masks * 6 - 4) + 2.0 * torch.randn(SLICES, SIZE, SIZE, generator=g)
    return torch.sigmoid(logits).unsqueeze(1), masks.unsqueeze(1)


def ours(probs: torch.Tensor, masks: torch.Tensor) -> float:
    from trainables.metrics import PixelHistogram, average_precision

    hist = PixelHistogram()
    for start in range(0, len(probs), BATCH):
        hist.update(probs[start : start + BATCH], masks[start : start + BATCH])
    return average_precision(*hist.negatives_positives())


def sklearn(probs: torch.Tensor, masks: torch.Tensor) -> float:
    from sklearn.metrics import average_precision_score

    scores = probs.reshape(-1).to(torch.float16).numpy()
    return float(average_precision_score(masks.reshape(-1).numpy(), scores))


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(*args)
        times.append(time.perf_counter() - start)
    return value, float(np.median(times))


def main() -> None:
    torch.set_num_threads(2)
    probs, masks = synthetic_split()
    pixels = probs.numel()
    ours(probs[:BATCH], masks[:BATCH])  # warm-up (imports, allocator)
    ap_ours, t_ours = timed(ours, probs, masks, repeats=5)
    ap_ref, t_ref = timed(sklearn, probs, masks, repeats=2)
    print(f"pixels: {pixels / 1e6:.1f} M ({SLICES} x {SIZE} x {SIZE}), torch threads 2")
    print(f"histogram AUPRC: {ap_ours!r}  median {t_ours:.3f} s")
    print(f"sklearn   AUPRC: {ap_ref!r}  median {t_ref:.3f} s")
    print(f"identical: {ap_ours == ap_ref}   speed-up: {t_ref / t_ours:.1f}x")
    if ap_ours != ap_ref:
        raise SystemExit("AUPRC differs from scikit-learn")


if __name__ == "__main__":
    main()
