"""Pixel metrics of a split, streamed batch by batch through one histogram.

The paper's headline number is the pixel AUPRC: scikit-learn's `average_precision_score` over every
pixel of a split pooled together (26 M pixels for 400 slices at 256 px). Sorting 26 M scores is what
makes that slow, and keeping them is what made the paper's code pickle hundreds of MB per run.

The trick: a probability rounded to float16 takes one of only 15,361 values in [0, 1] (bit patterns
0x0000 = 0.0 ... 0x3C00 = 1.0), and for non-negative floats the bit pattern orders like the value.
So instead of sorting we *count*: one `torch.bincount` over (bit pattern, label) per batch builds
two histograms, negatives and positives per distinct fp16 score, and never keeps a pixel. Every
ranking metric is a function of those counts alone:

    walk the occupied scores from high to low; at threshold t_i (the i-th distinct score)
    TP_i = positives with score >= t_i   (a cumulative sum of the positive histogram)
    FP_i = negatives with score >= t_i
    P_i  = TP_i / (TP_i + FP_i),   R_i = TP_i / TP_total
    AP   = sum_i (R_i - R_{i-1}) P_i                      (step-wise, no interpolation)

These are exactly the arrays scikit-learn builds after its sort (`_binary_clf_curve` keeps the last
index of each run of tied scores), and the final float64 reductions below are written as
scikit-learn writes them, so AP and ROC-AUC are *bitwise* equal to `average_precision_score` and
`roc_auc_score` called on the same fp16-rounded scores (tests check this on random, tied and
degenerate inputs). What is approximated is stated once, here: every metric in this module is of
the probabilities rounded to float16 (relative rounding 2^-11; below 6e-5 the fp16 subnormals keep
an absolute resolution of 6e-8). Nothing else is quantized.

Also from the same counts, with no further pass over pixels:
- ROC-AUC (trapezoid with ties, scikit-learn's `roc_curve(drop_intermediate=True)` points).
- Dice, IoU, recall, precision at threshold 0.5 (a pixel is predicted positive when its fp16
  probability is >= 0.5), and their soft versions (TP = sum p y, FP = sum p (1 - y),
  FN = sum (1 - p) y), pooled over all pixels of the split (micro averages).
- The PR curve (downsampled to <= 512 points for artifacts), a 100-bin histogram of the predicted
  probabilities over [0, 1] (numpy.histogram's bins: [k/100, (k+1)/100), the last one closed), the
  number of distinct fp16 predictions, and a spikiness score: the Gini coefficient of the 98
  interior bins [0.01, 0.99) of that histogram — 0 when the uncertain predictions spread evenly,
  towards 1 when they pile into a few spikes (the discretized "staircase" outputs of the paper's
  Figure 5). The two extreme bins are left out because confident pixels dominate any segmentation
  histogram and say nothing about discretization.

Undefined cases (documented rules): no positive pixel -> AUPRC NaN with a warning (scikit-learn
returns 0 there, which would read as a terrible model rather than an undefined one); a single
class -> ROC-AUC NaN; 0/0 in Dice, IoU, recall or precision -> NaN; no interior predictions ->
spikiness NaN.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.integrate import trapezoid

ONE_BITS = 0x3C00  # float16 bit pattern of 1.0
N_SCORES = ONE_BITS + 1  # distinct fp16 values in [0, 1]
HALF_BITS = 0x3800  # float16 bit pattern of 0.5
HIST_BINS = 100
PR_CURVE_POINTS = 512
_CHUNK = 1 << 22  # pixels per bincount: bounds the int32 index temporaries at 16 MB

#: The fp16 value of every bit pattern 0 .. 0x3C00, ascending.
SCORE_VALUES = np.arange(N_SCORES, dtype=np.uint16).view(np.float16).astype(np.float64)


class PixelHistogram:
    """Streaming counts of (fp16 score, label) over all pixels seen; never keeps a pixel."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None  # int64 (2, N_SCORES): row 0 negatives, 1 positives

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: probabilities in [0, 1] and a {0, 1} mask of the same shape."""
        if probs.shape != target.shape:
            raise ValueError(f"probs {tuple(probs.shape)} and target {tuple(target.shape)} differ")
        probs, target = probs.detach().reshape(-1), target.detach().reshape(-1)
        if self.counts is None:
            self.counts = torch.zeros(2 * N_SCORES, dtype=torch.int64, device=probs.device)
        for start in range(0, probs.numel(), _CHUNK):
            self._count(probs[start : start + _CHUNK], target[start : start + _CHUNK])

    def _count(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        p16 = probs.to(torch.float16, copy=True)  # a copy: abs_ below must not touch the input
        low, high = torch.aminmax(p16)
        if not (low >= 0 and high <= 1):  # also catches NaN
            raise ValueError(
                f"probabilities must lie in [0, 1]; got values in [{low.item()}, {high.item()}]"
            )
        target = target.float()
        # t - t^2 is 0 exactly for t in {0, 1} (and non-zero or NaN for anything else).
        if torch.addcmul(target, target, target, value=-1).any():
            raise ValueError("target must be a {0, 1} mask")
        # Non-negative fp16 bit patterns order like their values; abs_ turns -0.0 into +0.0.
        # index = bits + N_SCORES * label, in one int16 + int32 -> int32 pass.
        index = torch.add(p16.abs_().view(torch.int16), target.to(torch.int32), alpha=N_SCORES)
        self.counts += torch.bincount(index, minlength=2 * N_SCORES)

    def merge(self, other: PixelHistogram) -> None:
        if other.counts is not None:
            if self.counts is None:
                self.counts = other.counts.clone()
            else:
                self.counts += other.counts.to(self.counts.device)

    def negatives_positives(self) -> tuple[np.ndarray, np.ndarray]:
        """(negatives, positives) per fp16 score, int64 arrays of length N_SCORES."""
        if self.counts is None:
            raise ValueError("no pixels accumulated: call update() first")
        counts = self.counts.cpu().numpy().reshape(2, N_SCORES)
        return counts[0], counts[1]

    def compute(self) -> dict[str, float]:
        return summary(*self.negatives_positives())


# --------------------------------------------------------------------------- ranking metrics


def _cumulative(neg: np.ndarray, pos: np.ndarray):
    """TP, FP (float64) and thresholds at each occupied score, from high to low."""
    occupied = np.flatnonzero(neg + pos)[::-1]
    tps = np.cumsum(pos[occupied]).astype(np.float64)
    fps = np.cumsum(neg[occupied]).astype(np.float64)
    return tps, fps, SCORE_VALUES[occupied]


def precision_recall(neg: np.ndarray, pos: np.ndarray):
    """scikit-learn's precision_recall_curve: (precision, recall, thresholds), recall decreasing.

    Raises ValueError when there is no positive (recall undefined)."""
    tps, fps, thresholds = _cumulative(neg, pos)
    if tps.size == 0 or tps[-1] == 0:
        raise ValueError("no positive pixels: the PR curve is undefined")
    ps = tps + fps
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(ps != 0, np.divide(tps, ps), 0.0)
    recall = tps / tps[-1]
    return (
        np.concatenate([precision[::-1], [1.0]]),
        np.concatenate([recall[::-1], [0.0]]),
        thresholds[::-1],
    )


def average_precision(neg: np.ndarray, pos: np.ndarray) -> float:
    """Step-wise AP, bitwise equal to sklearn's average_precision_score; NaN without positives."""
    if pos.sum() == 0:
        warnings.warn("no positive pixels: AUPRC is undefined, reported as NaN", stacklevel=2)
        return math.nan
    precision, recall, _ = precision_recall(neg, pos)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def roc_auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """Trapezoid ROC-AUC, bitwise equal to sklearn's roc_auc_score; NaN for a single class."""
    if pos.sum() == 0 or neg.sum() == 0:
        return math.nan
    tps, fps, _ = _cumulative(neg, pos)
    if fps.shape[0] > 2:  # roc_curve(drop_intermediate=True): drop collinear points
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps = tps[keep], fps[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    return float(trapezoid(tps / tps[-1], fps / fps[-1]))


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


def hard_overlap(neg: np.ndarray, pos: np.ndarray) -> dict[str, float]:
    """Overlap metrics of the 0.5-thresholded prediction."""
    tp, fp = float(pos[HALF_BITS:].sum()), float(neg[HALF_BITS:].sum())
    return overlap(tp, fp, float(pos.sum()) - tp)


def soft_overlap(neg: np.ndarray, pos: np.ndarray) -> dict[str, float]:
    """Overlap metrics of the probabilities themselves (sum p y, sum p (1 - y), ...)."""
    tp = float(pos @ SCORE_VALUES)
    fp = float(neg @ SCORE_VALUES)
    return overlap(tp, fp, float(pos.sum()) - tp, prefix="soft_")


# --------------------------------------------------------------------------- figure data


def prediction_histogram(neg: np.ndarray, pos: np.ndarray, bins: int = HIST_BINS):
    """(bin_edges, counts): numpy.histogram(fp16 probabilities, bins, range=(0, 1))."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, SCORE_VALUES, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, weights=(neg + pos).astype(np.float64), minlength=bins)
    return edges, counts.astype(np.int64)


def spikiness(counts: np.ndarray) -> float:
    """Gini coefficient of the interior bins of a 100-bin histogram (see module docstring)."""
    interior = np.sort(counts[1:-1].astype(np.float64))
    total = interior.sum()
    if total == 0:
        return math.nan
    n = interior.size
    ranks = np.arange(1, n + 1)
    return float(2.0 * (ranks @ interior) / (n * total) - (n + 1) / n)


def pr_curve_points(neg: np.ndarray, pos: np.ndarray, max_points: int = PR_CURVE_POINTS):
    """The PR curve, evenly subsampled (first and last points kept) to <= max_points."""
    precision, recall, _ = precision_recall(neg, pos)
    keep = np.unique(np.linspace(0, precision.size - 1, max_points).round().astype(np.int64))
    return {"precision": precision[keep].tolist(), "recall": recall[keep].tolist()}


# --------------------------------------------------------------------------- all of it


def summary(neg: np.ndarray, pos: np.ndarray) -> dict[str, float]:
    """Every scalar metric of a split, from its histogram."""
    pixels = int(neg.sum() + pos.sum())
    if pixels == 0:
        raise ValueError("no pixels accumulated")
    _, hist = prediction_histogram(neg, pos)
    return {
        "auprc": average_precision(neg, pos),
        "roc_auc": roc_auc(neg, pos),
        **hard_overlap(neg, pos),
        **soft_overlap(neg, pos),
        "distinct_pred_values": float(np.count_nonzero(neg + pos)),
        "hist_spikiness": spikiness(hist),
        "positive_fraction": float(pos.sum()) / pixels,
        "pixels": float(pixels),
    }


def auprc(probs: torch.Tensor, target: torch.Tensor) -> float:
    """One-shot AUPRC of fp16-rounded probabilities (see the module docstring)."""
    hist = PixelHistogram()
    hist.update(probs, target)
    return average_precision(*hist.negatives_positives())
