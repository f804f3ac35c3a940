"""The prediction histogram's one spikiness measure, torch-free.

Both sides read it from here: the training loop logs `val_hist_spikiness` / `test_hist_spikiness`
(trainables.metrics) and the analysis recomputes `hist_spikiness` from each run's
`pred_hist.json` (sweep.analysis, which must not import torch). The same counts give the same
number on both sides.

The histogram: 100 bins over [0, 1] of the predicted probabilities (numpy.histogram's bins,
[k/100, (k+1)/100), the last one closed).

Spikiness is the share of the *interior* prediction mass that sits in isolated spikes, in [0, 1].
The first and last bins (confident background / foreground) are left out: every good segmentation
model piles most pixels there, and that says nothing about discretization. Each interior bin c_i is
compared with the median med_i of the bins within `window` (3) on either side, a running median
that follows any smooth shape (U-shaped or not); its excess over that baseline, less a Poisson
allowance of `sigmas` (3) * sqrt(med_i + 1) so that sampling noise in sparse tails does not count,
is spike mass::

    spikiness = sum_i max(0, c_i - med_i - sigmas * sqrt(med_i + 1)) / sum_i c_i

A smooth histogram scores ~0; a comb of a few discrete values with empty bins between them (the
"staircase" outputs of the paper's Figure 5, when attention discretizes) scores ~1. NaN when there
is no histogram (fewer than 3 bins, or NaN counts); 0 when the interior is empty.

Why this measure and not a Gini coefficient of the interior bins (what the loop used to log under
the same name): a Gini coefficient scores the *shape* of a smooth distribution too (0.19 for a
U-shaped 1/sqrt(p(1-p)) density, 0.38 for the sigmoid of N(-2, 3) logits, both continuous), so it
cannot separate "uneven" from "discrete". The running-median excess is 0.0 on both and rises only
for isolated spikes, which is what the diagnostic asks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

HIST_BINS = 100


def histogram_spikiness(counts: Sequence[float], *, window: int = 3, sigmas: float = 3.0) -> float:
    """Share of the interior prediction mass in isolated spikes, in [0, 1] (module docstring)."""
    c = np.asarray(counts, dtype=float)
    if c.size < 3 or np.isnan(c).any():
        return math.nan
    interior = c[1:-1]
    total = interior.sum()
    if total <= 0:
        return 0.0
    padded = np.pad(interior, window, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * window + 1)
    baseline = np.median(windows, axis=1)
    excess = np.maximum(0.0, interior - baseline - sigmas * np.sqrt(baseline + 1.0))
    return float(excess.sum() / total)
