"""A run's artifacts: the small files it leaves for the analysis, written once its best weights
have been evaluated (a `Callback`, `ArtifactsCallback`, added by the entry points that train).

    config.json                 the trial config
    history.json                one record per epoch
    pr_curve.json, _val         the test / validation PR curve, downsampled to <= 512 points
    pred_hist.json, _val        the histogram of predicted probabilities, 100 bins
    pr_curve.png, pred_hist.png both splits in one figure each
    quantization_error.json     SQNR and zero-scale fraction per quantized layer and operand
    best_model.pt               the best weights, only when tracking asks for them

Small files only (the paper's code pickled hundreds of MB of probabilities per run). The names
are the MLflow schema's (trainables.mlflow_schema), which the sweep's readers share; the run's
tracker logs every file at the root of its MLflow run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trainables.callbacks import Callback
from trainables.mlflow_schema import (
    CONFIG_ARTIFACT,
    HISTOGRAM_ARTIFACT,
    HISTORY_ARTIFACT,
    PR_CURVE_ARTIFACT,
    QUANT_ERROR_ARTIFACT,
    WEIGHTS_ARTIFACT,
    split_artifact,
)

if TYPE_CHECKING:  # the loop imports this module (trainables.loop.train)
    from trainables.loop import TrainingRun
    from trainables.metrics import SplitMetrics

__all__ = ["ARTIFACTS_DIR", "ArtifactsCallback", "quantization_table", "write_artifacts"]

ARTIFACTS_DIR = "artifacts"  # the default folder, inside the checkpoint: Tune persists it too

# The figures, named after the curves they draw.
PR_FIGURE = Path(PR_CURVE_ARTIFACT).with_suffix(".png").name
HISTOGRAM_FIGURE = Path(HISTOGRAM_ARTIFACT).with_suffix(".png").name


class ArtifactsCallback(Callback):
    """Writes the artifacts into `folder` at the final evaluation; returns them for the tracker."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def on_final_evaluation(self, run: TrainingRun, curves: dict[str, SplitMetrics]) -> list[Path]:
        return write_artifacts(run, curves, self.folder)


def write_artifacts(run: TrainingRun, curves: dict[str, SplitMetrics], out: Path) -> list[Path]:
    """The files of the module docstring, for the splits of `curves`, into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        run.config.save(out / CONFIG_ARTIFACT),
        _write_json(out / HISTORY_ARTIFACT, run.history),
    ]
    figure_data = {}
    for split, result in curves.items():
        hist = {"split": split, **result.histogram}
        pr = {"split": split, **result.pr_curve}
        paths.append(_write_json(out / split_artifact(PR_CURVE_ARTIFACT, split), pr))
        paths.append(_write_json(out / split_artifact(HISTOGRAM_ARTIFACT, split), hist))
        figure_data[split] = (pr, hist)
    paths.extend(_plot_figures(out, figure_data, run.config.trial_key))
    table = quantization_table(run)
    if table is not None:
        paths.append(_write_json(out / QUANT_ERROR_ARTIFACT, table))
    tracking = run.config.tracking
    if tracking is not None and tracking.log_weights and run.best_model is not None:
        weights = out / WEIGHTS_ARTIFACT
        torch.save({k: v.cpu() for k, v in run.best_model.items()}, weights)
        paths.append(weights)
    return paths


def quantization_table(run: TrainingRun) -> list[dict] | None:
    """Per quantized layer and operand (FPROP, DGRAD, WGRAD): SQNR in dB and the zero-scale
    fraction, measured by quant.telemetry on one forward + backward of the first validation
    batch with the run's current weights (the best ones, at the final evaluation). None when
    nothing is quantized (the baseline recipe).

    Eval mode (no dropout draw), gradients discarded, and the SR generator put back afterwards:
    measuring leaves no trace in the run's state."""
    import quant.telemetry
    from quant.modules import converted_layers

    if not converted_layers(run.model):
        return None
    x, y = next(iter(run.loader(run.data.val, shuffle=False, epoch=0)))
    x, y = x.to(run.device), y.to(run.device)
    sr_state = run.sr_generator.get_state()
    run.model.eval()
    with quant.telemetry.collect(run.model):
        with run.autocast():
            logits = run.model(x)
        run.loss_fn(logits, y).total.backward()
    run.model.zero_grad(set_to_none=True)
    run.sr_generator.set_state(sr_state)
    return quant.telemetry.quantization_report(run.model) or None


def _write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=1) + "\n")
    return path


def _plot_figures(out: Path, data: dict, title: str) -> list[Path]:
    # matplotlib's object API: no pyplot import, no global figure state, no display backend.
    from matplotlib.figure import Figure

    pr_axes = Figure(figsize=(4.5, 4)).add_subplot()
    for split, (pr, _) in data.items():
        pr_axes.step(pr["recall"], pr["precision"], where="post", label=split)
    pr_axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)

    hist_axes = Figure(figsize=(4.5, 4)).add_subplot()
    for split, (_, hist) in data.items():
        edges, counts = np.asarray(hist["bin_edges"]), np.asarray(hist["counts"])
        hist_axes.stairs(np.maximum(counts, 0.5), edges, label=split)  # 0.5: empty bins on log
    hist_axes.set(xlabel="predicted probability", ylabel="pixels", yscale="log", title=title)
    return [_save(pr_axes, out / PR_FIGURE), _save(hist_axes, out / HISTOGRAM_FIGURE)]


def _save(axes, path: Path) -> Path:
    axes.legend()
    figure = axes.figure
    figure.subplots_adjust(left=0.17, bottom=0.13, right=0.96, top=0.91)  # tight_layout is slow
    figure.savefig(path, dpi=100)
    return path
