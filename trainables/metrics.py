"""Pixel metrics of a split, computed exactly on the float32 probabilities.

The paper's headline number is the pixel AUPRC: scikit-learn's `average_precision_score` over every
pixel of a split pooled together (26.2 M pixels for 400 slices at 256 px), of the float32 sigmoid
probabilities, nothing rounded. This module computes exactly that number:

    auprc(probs, target) == average_precision_score(target.ravel(), probs.ravel())

bit for bit on the same float32 probabilities (tests: ties, near-ties below fp16 resolution,
saturated 1.0, subnormals, one positive in 10^6, all positive, tiny images); ROC-AUC and the PR
curve too (ROC-AUC to ~1e-16, the PR points bit for bit).

How. Each pixel is packed into one int32 key, `(float32 bit pattern << 1) | label`: for
non-negative floats the bit pattern orders like the value, so sorting the keys sorts the pixels by
probability, negatives before positives within a tie (the shift drops the sign bit, folding -0.0
into +0.0). With v_0 < ... < v_{m-1} the m distinct probabilities and n_j, p_j the negative and
positive pixels scoring exactly v_j::

    TP_j = sum_{i >= j} p_i,   FP_j = sum_{i >= j} n_i           (pixels scoring >= v_j)
    P_j = TP_j / (TP_j + FP_j),   R_j = TP_j / TP_0,   R_m = 0
    AP = -sum_{j < m} (R_{j+1} - R_j) P_j

That is scikit-learn's arithmetic term for term: `_binary_clf_curve` keeps one point per distinct
score (the last index of each run of ties), `precision_recall_curve` reverses its arrays into the
ascending order j used here, precision, recall and their difference are the same correctly
rounded float64 operations, and the final reduction is numpy's own `np.sum` over the same
m-element array (zero where p_j = 0, so numpy's pairwise summation groups the terms exactly as for
scikit-learn). Only the terms with p_j > 0 are non-zero, and only they need counts: after the
sort, one pass finds the runs of positive keys (a run per distinct value holding a positive); for
each, the run of negatives of the same value sits just before it (a binary search for key - 1),
TP and FP follow from positions in the sorted order, and its rank j among the m distinct values
is the number of runs starting below it (counted chunk by chunk) less the positive runs below
that share a value with negatives. So the pass walks the sorted keys in 1 M-pixel chunks with
small temporaries, and keeps one row per positive-holding value (`SplitCounts`).

ROC-AUC is the Mann-Whitney statistic, sum over positives of (negatives below + half the negatives
tied) / (P N), in integers until one division: exactly the area under scikit-learn's ROC curve
(trapezoids over tied scores), which scikit-learn sums in floating point (they agree to ~1e-16).

Why a sort. The previous version counted float16-rounded probabilities in 15,361 bins: fast, but
not the metric (every logit above ~8.3 rounds to 1.0 and ties; AP moved by -0.074 on wide logit
distributions). An exact count needs the whole 32-bit pattern, and on a trained model's output
nearly every pixel is distinct at float32 (15.0 M distinct values among the benchmark's 26.2 M
pixels), so a two-level count (coarse buckets on the high bits, an exact pass inside busy
buckets) does a sort's work anyway, with more code. Measured on these 26.2 M keys, 2 shared CPU
cores: numpy's in-place SIMD sort 0.1-0.4 s, `torch.sort` 0.8 s, `torch.unique` 1.9 s, against
11-34 s for scikit-learn's whole `average_precision_score`. So the CPU path sorts with numpy (in
place, no index array); other devices use `torch.sort` (a radix sort on CUDA) and the same pass in
torch (`count_sorted(numpy_sort=False)`, tested on CPU).

Memory: 4 bytes per pixel held between batches (105 MB for a 400-slice, 256 px split) on the
probabilities' device. `counts()` joins the batches into one tensor (another 4 B/pixel while the
batches are freed) and sorts it. On CPU the sort is in place and the chunked pass adds ~40 MB
(measured by bench.bench_metrics: the positives' positions and one chunk's temporaries). On CUDA
`torch.sort` returns a sorted copy and int64 indices (12 B/pixel) and its radix sort needs
scratch of up to as much again, so the peak is 16-28 B/pixel with the keys, 0.4-0.75 GB for the
400-slice split; the pass after it needs ~17 B/pixel (run-start flags, the odd-key mask, an int32
cumulative count). These are estimates from the tensors allocated: no GPU was available to
measure them. What is kept afterwards is small: one row per distinct value holding a positive,
plus the sorted keys until the scores are dropped.

Also from the same counts, with no further pass over pixels:
- Dice, IoU, recall, precision at threshold 0.5 (a pixel is predicted positive when its float32
  probability is >= 0.5), and their soft versions (TP = sum p y, FP = sum p (1 - y),
  FN = sum (1 - p) y), pooled over all pixels of the split (micro averages); the soft sums are
  float64 sums of v_j * p_j (relative error ~1e-16 against a pixel-by-pixel float64 sum).
- The PR curve for artifacts and figures (`pr_curve_points`): one step per distinct value holding a
  positive, at most 512 points; a longer curve is cut into <= 511 recall bands, each drawn at its
  area-weighted mean precision, so the area under the stored staircase is still AP.
- A 100-bin histogram of the predicted probabilities over [0, 1] (numpy.histogram's bins), the
  number of distinct float32 predictions, and the histogram's spikiness
  (trainables.histogram.histogram_spikiness: the share of interior mass in isolated spikes, the one
  measure the analysis uses too).

Undefined cases (documented rules): no positive pixel -> AUPRC NaN with a warning (scikit-learn
returns 0 there, which would read as a terrible model rather than an undefined one); a single
class -> ROC-AUC NaN; 0/0 in Dice, IoU, recall or precision -> NaN; an empty histogram interior
-> spikiness 0.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from trainables.histogram import HIST_BINS, histogram_spikiness

PR_CURVE_POINTS = 512
_CHUNK = 1 << 20  # pixels per step of the CPU pass over the sorted keys (bounds its temporaries)
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)  # exactly representable in float32


@dataclass(frozen=True)
class SplitCounts:
    """What the metrics need from a split's sorted pixels: a few totals, the histogram, and one
    row per distinct probability that some positive pixel has (host arrays, ascending)."""

    pixels: int
    positives: int
    distinct: int  # m, the number of distinct float32 probabilities
    sum_probs: float  # sum of every probability, float64
    histogram: np.ndarray  # (HIST_BINS,) pixels per bin of numpy.histogram(probs, 100, (0, 1))
    positives_above_half: int  # scoring >= 0.5
    pixels_above_half: int
    index: np.ndarray  # j: the value's rank among the m distinct probabilities
    values: np.ndarray  # float32
    pos: np.ndarray  # positive pixels scoring exactly `values`
    neg_tied: np.ndarray  # negative pixels scoring exactly `values`
    neg_below: np.ndarray  # negative pixels scoring below `values`

    @property
    def negatives(self) -> int:
        return self.pixels - self.positives

    def at_or_above(self) -> tuple[np.ndarray, np.ndarray]:
        """(TP, FP) at each row's threshold: pixels scoring >= it, float64 (exact below 2^53)."""
        tps = self.positives - (np.cumsum(self.pos) - self.pos)
        fps = self.negatives - self.neg_below
        return tps.astype(np.float64), fps.astype(np.float64)


@dataclass(frozen=True)
class SplitMetrics:
    """What a split's evaluation keeps: scalar metrics and the small figure data."""

    metrics: dict[str, float]
    pr_curve: dict[str, list[float]]  # {"precision", "recall"}; empty lists without positives
    histogram: dict[str, list]  # {"bin_edges", "counts"}


class PixelScores:
    """Every (probability, label) pair of a split, packed 4 bytes a pixel, until `counts()`."""

    def __init__(self) -> None:
        self._keys: list[torch.Tensor] = []
        self._result: SplitMetrics | None = None

    @property
    def pixels(self) -> int:
        return sum(k.numel() for k in self._keys)

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: float32 probabilities in [0, 1] and a {0, 1} mask of the same shape."""
        self._keys.append(pack(probs, target))
        self._result = None

    def merge(self, other: PixelScores) -> None:
        if not other._keys:
            return
        device = self._keys[0].device if self._keys else other._keys[0].device
        self._keys += [k.to(device) for k in other._keys]
        self._result = None

    def counts(self) -> SplitCounts:
        """Sort the keys and count what the metrics need (see the module docstring)."""
        if not self._keys:
            raise ValueError("no pixels accumulated: call update() first")
        keys = self._keys[0] if len(self._keys) == 1 else torch.cat(self._keys)
        self._keys = [keys]  # sorted in place below: still the same pixels, one tensor
        return count_sorted(keys)

    def result(self) -> SplitMetrics:
        """Metrics, PR curve and histogram of everything accumulated (computed once)."""
        if self._result is None:
            self._result = split_metrics(self.counts())
        return self._result

    def compute(self) -> dict[str, float]:
        return self.result().metrics


def pack(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One int32 key per pixel, (float32 bits << 1) | label, after checking both inputs."""
    if probs.shape != target.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and target {tuple(target.shape)} differ")
    if probs.dtype not in _FLOATS:
        raise ValueError(
            f"probabilities must be float32 (or float16/bfloat16), got {probs.dtype}: the metric "
            "is defined on float32 scores, and rounding float64 ones would change their ties"
        )
    probs = probs.detach().reshape(-1).to(torch.float32).contiguous()
    target = target.detach().reshape(-1)
    if probs.numel() == 0:
        raise ValueError("an empty batch: no pixels")
    low, high = torch.aminmax(probs)
    if not (low >= 0 and high <= 1):  # also catches NaN
        raise ValueError(
            f"probabilities must lie in [0, 1]; got values in [{low.item()}, {high.item()}]"
        )
    if target.dtype != torch.bool:
        t = target.float()
        # t - t^2 is 0 exactly for t in {0, 1} (and non-zero or NaN for anything else).
        if torch.addcmul(t, t, t, value=-1).any():
            raise ValueError("target must be a {0, 1} mask")
    # The shift drops the sign bit (-0.0 -> +0.0); bits of [0, 1] are < 2^30, so keys stay >= 0.
    return (probs.view(torch.int32) << 1).bitwise_or_(target.to(torch.int32))


def _edge_keys(thresholds: np.ndarray) -> np.ndarray:
    """The smallest key of a pixel scoring >= each float64 threshold (label 0, the smallest
    float32 >= it): a binary search for it finds the first pixel at or above the threshold."""
    f = thresholds.astype(np.float32)
    f = np.where(f < thresholds, np.nextafter(f, np.float32(np.inf)), f).astype(np.float32)
    return f.view(np.int32) << 1  # < 2^31: [0, 1] floats have bits < 2^30


_HIST_KEYS = _edge_keys(np.linspace(0.0, 1.0, HIST_BINS + 1)[:-1])  # numpy.histogram's bins
_HALF_KEY = _edge_keys(np.array([0.5]))


@dataclass(frozen=True)
class _SortedRuns:
    """What one pass over the sorted keys yields (host arrays; one row per run of positives)."""

    pixels: int
    runs: int  # runs of equal keys
    first: np.ndarray  # first pixel of each run of positives (sorted order)
    end: np.ndarray  # one past its last pixel
    key: np.ndarray  # its key
    value_start: np.ndarray  # first pixel of its value (its run of negatives, if any)
    runs_below: np.ndarray  # runs starting before value_start
    bin_starts: np.ndarray  # first pixel of each histogram bin
    half_start: int  # first pixel scoring >= 0.5
    sum_probs: float  # of every probability, float64


def _sorted_runs_numpy(keys: torch.Tensor) -> _SortedRuns:
    """CPU: numpy's in-place SIMD sort (3-8x faster than torch.sort there, no index array), then
    passes over 1 M-pixel chunks, so every temporary stays a few MB."""
    a = keys.numpy()
    a.sort()
    n = a.size
    low_byte = a.view(np.uint8)[0 if sys.byteorder == "little" else 3 :: 4]
    positive = np.concatenate(
        [np.flatnonzero(low_byte[s : s + _CHUNK] & 1) + s for s in range(0, n, _CHUNK)]
    )
    starts_run = (positive == 0) | (a[positive] != a[np.maximum(positive - 1, 0)])
    group = np.flatnonzero(starts_run)  # positives that start a run
    first = positive[group]
    end = np.r_[positive[group[1:] - 1], positive[-1:]] + 1 if group.size else first
    key = a[first]
    value_start = np.searchsorted(a, key - 1)  # its run of negatives starts there, if any
    runs_below, runs, sum_probs = _chunked_pass(a, value_start)
    return _SortedRuns(
        pixels=n,
        runs=runs,
        first=first,
        end=end,
        key=key,
        value_start=value_start,
        runs_below=runs_below,
        bin_starts=np.searchsorted(a, _HIST_KEYS),
        half_start=int(np.searchsorted(a, _HALF_KEY)[0]),
        sum_probs=sum_probs,
    )


def _chunked_pass(a: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, int, float]:
    """How many runs of equal keys start before each of the ascending `positions`, the number
    of runs in all, and the float64 sum of every probability, chunk by chunk."""
    below = np.empty(positions.size, dtype=np.int64)
    total, sum_probs = 0, 0.0
    for s in range(0, a.size, _CHUNK):
        e = min(a.size, s + _CHUNK)
        starts = np.empty(e - s, dtype=bool)
        if s == 0:
            starts[0] = True
            np.not_equal(a[1:e], a[: e - 1], out=starts[1:])
        else:
            np.not_equal(a[s:e], a[s - 1 : e - 1], out=starts)
        lo, hi = np.searchsorted(positions, [s, e])
        if hi > lo:
            seen = np.cumsum(starts, dtype=np.int64)  # run starts in [s, s + i]
            offset = positions[lo:hi] - s
            below[lo:hi] = total + np.where(offset > 0, seen[np.maximum(offset - 1, 0)], 0)
        total += int(np.count_nonzero(starts))
        sum_probs += float(np.sum((a[s:e] >> 1).view(np.float32), dtype=np.float64))
    return below, total, sum_probs


def _sorted_runs_torch(keys: torch.Tensor) -> _SortedRuns:
    """Other devices (CUDA): the same pass in torch; torch.sort is a radix sort there."""
    a = torch.sort(keys).values
    n = a.numel()
    run_start = torch.ones(n, dtype=torch.bool, device=a.device)
    torch.ne(a[1:], a[:-1], out=run_start[1:])
    positive = torch.nonzero(a & 1).squeeze(1)
    group = torch.nonzero(run_start[positive]).squeeze(1)
    first = positive[group]
    end = torch.cat([positive[group[1:] - 1], positive[-1:]]) + 1 if group.numel() else first
    key = a[first]
    value_start = torch.searchsorted(a, key - 1)
    below = torch.cumsum(run_start, 0, dtype=torch.int64 if n >= 2**31 else torch.int32)
    runs_below = torch.where(value_start > 0, below[(value_start - 1).clamp(min=0)], 0)
    edges = torch.from_numpy(np.r_[_HIST_KEYS, _HALF_KEY]).to(a.device)
    starts = torch.searchsorted(a, edges).cpu().numpy()
    host = [t.cpu().numpy() for t in (first, end, key, value_start, runs_below)]
    sum_probs = float((a >> 1).view(torch.float32).sum(dtype=torch.float64))
    return _SortedRuns(n, int(below[-1]), *host, starts[:-1], int(starts[-1]), sum_probs)


def _split_counts(r: _SortedRuns) -> SplitCounts:
    pos = (r.end - r.first).astype(np.int64)
    shared = r.value_start < r.first  # the value has negatives too: two runs, one value
    positives_before = np.cumsum(pos) - pos
    histogram = np.diff(np.r_[r.bin_starts, r.pixels]).astype(np.int64)
    return SplitCounts(
        pixels=r.pixels,
        positives=int(pos.sum()),
        distinct=r.runs - int(shared.sum()),
        sum_probs=r.sum_probs,
        histogram=histogram,
        positives_above_half=int(pos[r.first >= r.half_start].sum()),
        pixels_above_half=r.pixels - r.half_start,
        # A value's rank: the runs below it, less the runs of positives below that share a value.
        index=r.runs_below - (np.cumsum(shared) - shared),
        values=(r.key.astype(np.int32) >> 1).view(np.float32),
        pos=pos,
        neg_tied=(r.first - r.value_start).astype(np.int64),
        neg_below=(r.value_start - positives_before).astype(np.int64),
    )


def count_sorted(keys: torch.Tensor, *, numpy_sort: bool | None = None) -> SplitCounts:
    """Sort `keys` (in place on CPU) and count what the metrics need. `numpy_sort=False` runs the
    device path on CPU (tests)."""
    if numpy_sort is None:
        numpy_sort = keys.device.type == "cpu"
    runs = _sorted_runs_numpy(keys) if numpy_sort else _sorted_runs_torch(keys)
    return _split_counts(runs)


def score_counts(probs: torch.Tensor, target: torch.Tensor) -> SplitCounts:
    """The `SplitCounts` of one batch (tests and one-shot use)."""
    scores = PixelScores()
    scores.update(probs, target)
    return scores.counts()


# --------------------------------------------------------------------------- ranking metrics


def _pr_steps(c: SplitCounts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R_j, R_{j+1} and P_j at each distinct value j holding a positive (float64)."""
    tps, fps = c.at_or_above()
    recall = tps / c.positives
    next_recall = (tps - c.pos) / c.positives
    precision = tps / (tps + fps)
    return recall, next_recall, precision


def average_precision(c: SplitCounts) -> float:
    """Step-wise AP, bitwise equal to sklearn's average_precision_score; NaN without positives."""
    if c.positives == 0:
        warnings.warn("no positive pixels: AUPRC is undefined, reported as NaN", stacklevel=2)
        return math.nan
    recall, next_recall, precision = _pr_steps(c)
    terms = np.zeros(c.distinct)  # numpy's sum over sklearn's m-element array, zeros included
    terms[c.index] = (next_recall - recall) * precision
    return float(max(0.0, -np.sum(terms)))


def roc_auc(c: SplitCounts) -> float:
    """ROC-AUC as the Mann-Whitney statistic, exact in integers until one final division:
    sum over positives of (negatives below + half the tied ones) / (P N). It is the trapezoid
    area scikit-learn's roc_auc_score sums (to ~1e-16); NaN for a single class."""
    if c.positives == 0 or c.negatives == 0:
        return math.nan
    twice_u = int(np.sum(c.pos * (2 * c.neg_below + c.neg_tied)))  # < 2^63 below 2^31 pixels
    return twice_u / (2 * c.positives * c.negatives)


def pr_curve_points(c: SplitCounts, max_points: int = PR_CURVE_POINTS) -> dict[str, list[float]]:
    """The PR staircase in scikit-learn's order (recall decreasing, ending at (0, 1)): precision
    P_i holds for recall in (R_{i+1}, R_i], so sum_i (R_i - R_{i+1}) P_i = AP.

    One point per distinct value holding a positive (exactly scikit-learn's values there). Past
    `max_points`, consecutive steps are merged into recall bands of width ~1 / (max_points - 1),
    each drawn at its area-weighted mean precision: the staircase is coarser, its area still AP.
    """
    if c.positives == 0:
        raise ValueError("no positive pixels: the PR curve is undefined")
    recall, next_recall, precision = _pr_steps(c)
    if recall.size + 1 > max_points:
        band = np.minimum(np.floor((1.0 - recall) * (max_points - 1)), max_points - 2)
        first = np.flatnonzero(np.r_[True, band[1:] != band[:-1]])
        last = np.r_[first[1:] - 1, band.size - 1]
        area = np.cumsum((recall - next_recall) * precision)
        band_area = area[last] - np.r_[0.0, area[last[:-1]]]
        recall, width = recall[first], recall[first] - next_recall[last]
        precision = band_area / width
    return {"precision": [*precision.tolist(), 1.0], "recall": [*recall.tolist(), 0.0]}


# --------------------------------------------------------------------------- overlap metrics


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def overlap(tp: float, fp: float, fn: float, prefix: str = "") -> dict[str, float]:
    """Dice, IoU, recall and precision from (soft or hard) TP, FP, FN."""
    return {
        f"{prefix}dice": _ratio(2 * tp, 2 * tp + fp + fn),
        f"{prefix}iou": _ratio(tp, tp + fp + fn),
        f"{prefix}recall": _ratio(tp, tp + fn),
        f"{prefix}precision": _ratio(tp, tp + fp),
    }


def hard_overlap(c: SplitCounts) -> dict[str, float]:
    """Overlap metrics of the prediction `probability >= 0.5`."""
    tp = c.positives_above_half
    fp = c.pixels_above_half - tp
    return overlap(float(tp), float(fp), float(c.positives - tp))


def soft_overlap(c: SplitCounts) -> dict[str, float]:
    """Overlap metrics of the probabilities themselves (sum p y, sum p (1 - y), ...)."""
    tp = float(np.dot(c.values.astype(np.float64), c.pos.astype(np.float64)))
    return overlap(tp, c.sum_probs - tp, c.positives - tp, prefix="soft_")


# --------------------------------------------------------------------------- figure data


def prediction_histogram(c: SplitCounts) -> tuple[np.ndarray, np.ndarray]:
    """(bin_edges, counts), as numpy.histogram(probabilities, 100, range=(0, 1)) gives them."""
    return np.linspace(0.0, 1.0, HIST_BINS + 1), c.histogram.astype(np.int64)


# --------------------------------------------------------------------------- all of it


def summary(c: SplitCounts) -> dict[str, float]:
    """Every scalar metric of a split, from its counts."""
    return {
        "auprc": average_precision(c),
        "roc_auc": roc_auc(c),
        **hard_overlap(c),
        **soft_overlap(c),
        "distinct_pred_values": float(c.distinct),
        "hist_spikiness": histogram_spikiness(c.histogram),
        "positive_fraction": c.positives / c.pixels,
        "pixels": float(c.pixels),
    }


def split_metrics(c: SplitCounts) -> SplitMetrics:
    """Scalar metrics, PR curve and histogram of a split."""
    edges, hist = prediction_histogram(c)
    curve = pr_curve_points(c) if c.positives else {"precision": [], "recall": []}
    return SplitMetrics(summary(c), curve, {"bin_edges": edges.tolist(), "counts": hist.tolist()})


def auprc(probs: torch.Tensor, target: torch.Tensor) -> float:
    """The pixel AUPRC of one batch: sklearn's average_precision_score on float32 scores."""
    return average_precision(score_counts(probs, target))
