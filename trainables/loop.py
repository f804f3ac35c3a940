"""One QAT training run under the paper's protocol. No Ray here: the trainable wraps this.

    run = TrainingRun(config, checkpoint_dir=..., data_root=...)   # build, or restore
    result = run.fit()                                             # epochs, then final evaluation
    result = train(config, checkpoint_dir=...)                     # the same, with its artifacts

The run's parts are built by trainables.factories (seeds, device, model, step, optimizer) and
trainables.data (the data root and datasets); its artifacts are written by a callback
(trainables.artifacts); its MLflow tracking is wired around it by trainables.tracked_run.

Protocol (docs/study.md "Training", its defects not repeated):
- Identical initial weights for every recipe of one (arch, scale, seed): seed torch with the seed,
  build the model, *then* `quant.prepare(model, recipe)`, which swaps layers but shares the very
  Parameters, so the weights cannot depend on the recipe. Then re-seed (torch, numpy, python) from
  (seed, "train") so dropout streams match across recipes too. Stochastic rounding draws from a
  generator of its own, seeded from (seed, "sr") and owned by the run (checkpointed).
- Data order: a fresh generator per epoch seeded from (seed, "order", epoch), passed to the
  DataLoader (which then draws nothing from the global RNG); augmentation is seeded per (seed,
  epoch, sample) by the dataset's `set_epoch`. A resumed run sees exactly the same batches.
- Per epoch: train (BCE + Tversky, gradient clipping at norm 1.0), validate (loss and every pixel
  metric of trainables.metrics), ReduceLROnPlateau(mode="min") on the validation loss, early
  stopping, best-weights bookkeeping, checkpoint, report.
- Early stopping: an improvement is a drop of the validation loss by more than min_delta (0.001)
  below the best so far; the patience counter (20) counts only epochs after the warmup (40), so
  no run stops before epoch warmup + patience. The best weights are those of the lowest validation
  loss of any epoch (any drop counts there): they are the result.
- At the end: load the best weights, evaluate validation and test, hand the curves to the
  callbacks (`on_final_evaluation`: the artifacts), save the final checkpoint, log the final
  metrics and the artifacts.
- A non-finite training or validation loss raises NonFiniteLossError naming the epoch and step:
  the run fails loudly; no batch or epoch is ever skipped. So does a NaN/inf NVFP4 operand
  (NonFiniteOperandError, a NonFiniteLossError): the quantizers record it in a device-side flag
  (quant.nvfp4.FiniteCheck) instead of synchronizing, and each step reads the flag together
  with the loss terms in one device-to-host transfer, after the backward and before the
  optimizer step.
- `compile` (off | on | auto = off for now, see factories.compile_enabled): the steps run
  through quant.compile.compile_model (torch.compile, fullgraph, bit-exact quantization); the
  module itself stays eager for telemetry and checkpoints.
- Device: CUDA with bf16 autocast when available (`precision="auto"`), fp32 on CPU, where the run
  is deterministic (torch.use_deterministic_algorithms) and bitwise reproducible for a fixed
  number of threads, across a stop and restore included.

Observers: `tracker` (trainables.tracking.TrialTracker, or anything with log_epoch, log_final,
log_artifact and state) and `callbacks` (trainables.callbacks: those given, then those the
config names); `on_epoch_end` runs once the epoch's checkpoint is on disk — the Ray trainable
reports that folder to Ray Tune.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from quant import nvfp4
from trainables.artifacts import ARTIFACTS_DIR, ArtifactsCallback
from trainables.callbacks import Callback, config_callbacks
from trainables.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from trainables.config import TrialConfig
from trainables.data import build_datasets_for, resolve_data_root
from trainables.factories import (
    autocast_dtype,
    build_model_for,
    build_optimizer,
    derive_seed,
    resolve_device,
    seed_globals,
    step_model_for,
)
from trainables.failures import NonFiniteLoss
from trainables.losses import SegmentationLoss
from trainables.metrics import PixelScores

#: Per-epoch keys that measure time, not results (left out of exactness comparisons).
TIMING_KEYS = frozenset({"epoch_time_s"})


#: Training diverged (trainables.failures: never retried).
NonFiniteLossError = NonFiniteLoss


class NonFiniteOperandError(NonFiniteLossError):
    """An NVFP4 operand (activation, weight or gradient) held NaN or inf during a step."""


@dataclass
class RunResult:
    """How a run ended. `artifacts`: the files its callbacks wrote at the final evaluation (none
    when it was restored finished); `artifacts_dir`: their folder, set by `train` and
    trainables.tracked_run.run_tracked."""

    config: TrialConfig
    final_metrics: dict[str, float]
    history: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool
    checkpoint_dir: Path
    artifacts_dir: Path | None = None
    artifacts: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- early stopping


class EarlyStopping:
    """Stop after `patience` post-warmup epochs without a drop of more than `min_delta`."""

    def __init__(self, min_delta: float, patience: int, warmup: int) -> None:
        self.min_delta, self.patience, self.warmup = min_delta, patience, warmup
        self.best = math.inf
        self.bad_epochs = 0

    def step(self, epoch: int, val_loss: float) -> bool:
        """Record epoch `epoch` (1-based); True when training should stop after it."""
        if self.best - val_loss > self.min_delta:
            self.best, self.bad_epochs = val_loss, 0
        elif epoch > self.warmup:  # the counter does not accumulate during warmup
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])


# --------------------------------------------------------------------------- the run


class TrainingRun:
    """Everything one run owns; `fit()` trains to the end (resuming if a checkpoint is given)."""

    def __init__(
        self,
        config: TrialConfig,
        *,
        checkpoint_dir: str | os.PathLike,
        data_root: str | os.PathLike | None = None,
        resume_from: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        tracker: Any = None,
        callbacks: Iterable[Callback] = (),
        datasets: Any = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(device)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.tracker = tracker
        self.callbacks = [*_checked(callbacks), *config_callbacks(config)]
        self.amp_dtype = autocast_dtype(config, self.device)
        if self.device.type == "cpu":
            # The eager flag of torch.use_deterministic_algorithms(True, warn_only=True). The
            # public setter also imports torch._inductor to set the compiler's flag: 2 s per
            # trial process on 2 cores, for a compiler a CPU run uses only under `compile: on`
            # (`auto` leaves it off on the CPU).
            torch._C._set_deterministic_algorithms(True, warn_only=True)
        if datasets is None:
            root = Path(data_root) if data_root is not None else resolve_data_root(config)
            datasets = build_datasets_for(config, root)
        self.data = datasets
        self.sr_generator = torch.Generator(device=self.device)
        self.sr_generator.manual_seed(derive_seed(config.seed, "sr"))
        self.model = build_model_for(config, self.sr_generator, self.device).to(self.device)
        # Quantizers record non-finite operands here on the device (no host sync); each step
        # reads it once, together with the loss (`_step_values`).
        self.finite_check = nvfp4.FiniteCheck(self.device)
        self.step_model = step_model_for(config, self.model, self.device)
        seed_globals(derive_seed(config.seed, "train"))
        self.optimizer = build_optimizer(config, self.model)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=config.plateau_factor,
            patience=config.plateau_patience,
        )  # fmt: skip
        self.stopper = EarlyStopping(
            config.early_stop_min_delta, config.early_stop_patience, config.early_stop_warmup
        )
        self.loss_fn = SegmentationLoss(config)
        self.epoch = 0  # last completed epoch
        self.history: list[dict[str, float]] = []
        self.best_val_loss, self.best_epoch, self.best_model = math.inf, 0, None
        self.stopped_early = False
        self.final_metrics: dict[str, float] | None = None
        if resume_from is not None:
            self.restore(resume_from)

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "finished": self.final_metrics is not None,
            "stopped_early": self.stopped_early,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "best": {
                "val_loss": self.best_val_loss,
                "epoch": self.best_epoch,
                "model": self.best_model,
            },  # fmt: skip
            "history": self.history,
            "rng": capture_rng(self.sr_generator),
            "tracking": self.tracker.state() if self.tracker is not None else None,
            "final_metrics": self.final_metrics,
        }

    def save(self) -> Path:
        return save_checkpoint(self.checkpoint_dir, self.state(), self.config)

    def restore(self, directory: str | os.PathLike) -> None:
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
        state = load_checkpoint(directory, self.config, map_location="cpu")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stopper.load_state_dict(state["early_stopping"])
        best = state["best"]
        self.best_val_loss, self.best_epoch, self.best_model = (
            best["val_loss"], best["epoch"], best["model"],
        )  # fmt: skip
        self.history = list(state["history"])
        self.epoch, self.stopped_early = state["epoch"], state["stopped_early"]
        self.final_metrics = state["final_metrics"]
        restore_rng(state["rng"], self.sr_generator)

    # ------------------------------------------------------------------ epochs

    def autocast(self) -> AbstractContextManager:
        """The run's precision for a forward: bf16 autocast, or nothing (fp32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def loader(self, dataset: Dataset, *, shuffle: bool, epoch: int) -> DataLoader:
        """Batches of `dataset`, in the order of (seed, "order", epoch) when shuffled."""
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, "order", epoch))
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.data.train.set_epoch(epoch)
        params = [p for p in self.model.parameters() if p.requires_grad]
        sums, seen = np.zeros(3), 0
        for step, (x, y) in enumerate(self.loader(self.data.train, shuffle=True, epoch=epoch)):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with nvfp4.deferred(self.finite_check):
                with self.autocast():
                    logits = self.step_model(x)
                terms = self.loss_fn(logits, y)
                terms.total.backward()
            values = self._step_values(terms, "training loss", f" at epoch {epoch}, step {step}")
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
            self.optimizer.step()
            sums += np.array(values) * len(x)
            seen += len(x)
        train = (sums / seen).tolist()  # Python floats: numpy scalars cannot be checkpointed
        return {"train_loss": train[0], "train_bce": train[1], "train_tversky": train[2]}

    def _step_values(self, terms, what: str, where: str = "") -> list[float]:
        """The loss terms as floats and the operand check, in one device-to-host transfer;
        raises (before any optimizer step) when either is not finite."""
        check = self.finite_check
        values = torch.stack([t.detach().float() for t in terms] + [check.flag.float()])
        *values, bad_operand = values.tolist()
        check.reset()
        if not math.isfinite(values[0]):
            raise NonFiniteLossError(
                f"{self.config.trial_key}: {what} {values[0]}{where} "
                f"(bce {values[1]}, tversky {values[2]})"
            )
        if bad_operand:
            raise NonFiniteOperandError(
                f"{self.config.trial_key}: an NVFP4 operand (activation, weight or gradient) "
                f"held NaN or inf{where}, with a finite {what} {values[0]}"
            )
        return values

    @torch.no_grad()
    def evaluate(self, dataset) -> tuple[dict[str, float], PixelScores]:
        """Loss terms and the pixel scores of `dataset` under the current weights."""
        self.model.eval()
        hist, sums, seen = PixelScores(), np.zeros(3), 0
        for x, y in self.loader(dataset, shuffle=False, epoch=0):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            with nvfp4.deferred(self.finite_check), self.autocast():
                logits = self.step_model(x)
            terms = self.loss_fn(logits, y)
            sums += np.array(self._step_values(terms, "evaluation loss")) * len(x)
            seen += len(x)
            hist.update(torch.sigmoid(logits.float()), y)
        loss = (sums / seen).tolist()
        if not math.isfinite(loss[0]):
            raise NonFiniteLossError(f"{self.config.trial_key}: evaluation loss {loss[0]}")
        return {"loss": loss[0], "bce": loss[1], "tversky": loss[2]}, hist

    def run_epoch(self, epoch: int) -> dict[str, float]:
        start = time.perf_counter()
        record: dict[str, float] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        record.update(self.train_epoch(epoch))
        losses, hist = self.evaluate(self.data.val)
        record.update({f"val_{k}": v for k, v in losses.items()})
        record.update({f"val_{k}": v for k, v in hist.compute().items()})
        val_loss = record["val_loss"]
        self.scheduler.step(val_loss)
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch = val_loss, epoch
            self.best_model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.stopped_early = self.stopper.step(epoch, val_loss)
        record.update(best_val_loss=self.best_val_loss, best_epoch=self.best_epoch)
        record["epoch_time_s"] = time.perf_counter() - start
        return {k: float(v) for k, v in record.items()}

    # ------------------------------------------------------------------ the whole run

    def fit(self) -> RunResult:
        while self.final_metrics is None and self.epoch < self.config.epochs:
            if self.stopped_early:
                break
            epoch = self.epoch + 1
            for callback in self.callbacks:
                callback.on_epoch_start(epoch, self)
            record = self.run_epoch(epoch)
            self.epoch = epoch
            self.history.append(record)
            self.save()
            if self.tracker is not None:
                self.tracker.log_epoch(epoch, record)
            for callback in self.callbacks:
                callback.on_epoch_end(record, self.checkpoint_dir)
        artifacts = []
        if self.final_metrics is None:
            artifacts = self.finish()
        for callback in self.callbacks:
            callback.on_train_end(self.final_metrics, self.checkpoint_dir)
        return RunResult(
            config=self.config,
            final_metrics=self.final_metrics,
            history=self.history,
            best_epoch=self.best_epoch,
            stopped_early=self.stopped_early,
            checkpoint_dir=self.checkpoint_dir,
            artifacts=artifacts,
        )

    def finish(self) -> list[Path]:
        """Best weights -> final validation and test metrics, the callbacks' files (artifacts),
        the final checkpoint, then the tracker's final record."""
        if self.best_model is not None:
            self.model.load_state_dict(self.best_model)
        final: dict[str, float] = {
            "best_epoch": float(self.best_epoch),
            "best_val_loss": float(self.best_val_loss),
            "epochs_run": float(self.epoch),
            "stopped_early": float(self.stopped_early),
        }
        curves = {}
        for split in ("val", "test"):
            losses, hist = self.evaluate(getattr(self.data, split))
            final.update({f"{split}_{k}": float(v) for k, v in losses.items()})
            curves[split] = hist.result()
            final.update({f"{split}_{k}": float(v) for k, v in curves[split].metrics.items()})
        paths = [path for c in self.callbacks for path in c.on_final_evaluation(self, curves)]
        self.final_metrics = final
        self.save()
        if self.tracker is not None:
            self.tracker.log_final(final)
            for path in paths:
                self.tracker.log_artifact(path)
        return paths


def _checked(callbacks: Iterable[Callback]) -> list[Callback]:
    callbacks = list(callbacks)
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(
                f"{type(callback).__name__} is not a trainables.callbacks.Callback (subclass it: "
                "the loop calls every hook, each a no-op unless overridden)"
            )
    return callbacks


def train(
    config: TrialConfig,
    *,
    checkpoint_dir: str | os.PathLike,
    artifacts_dir: str | os.PathLike | None = None,
    callbacks: Iterable[Callback] = (),
    **options: Any,
) -> RunResult:
    """Train one run to the end (see TrainingRun) with its artifacts (trainables.artifacts) in
    `artifacts_dir`, default `checkpoint_dir`/artifacts; `options` are TrainingRun's (data_root,
    resume_from, device, tracker, datasets). A tracked run: trainables.tracked_run."""
    artifacts = ArtifactsCallback(artifacts_dir or Path(checkpoint_dir) / ARTIFACTS_DIR)
    run = TrainingRun(
        config, checkpoint_dir=checkpoint_dir, callbacks=[artifacts, *callbacks], **options
    )
    return replace(run.fit(), artifacts_dir=artifacts.folder)
