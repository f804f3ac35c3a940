"""One QAT training run under the paper's protocol. No Ray here: the trainable wraps this.

    run = TrainingRun(config, checkpoint_dir=..., data_root=...)   # build, or restore
    result = run.fit()                                             # epochs, then final evaluation

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
- At the end: load the best weights, evaluate validation and test, log final metrics and the
  artifacts (config, history, PR curves, prediction histograms, their PNGs, the quantization-error
  table).
- A non-finite training or validation loss raises NonFiniteLossError naming the epoch and step:
  the run fails loudly; no batch or epoch is ever skipped. So does a NaN/inf NVFP4 operand
  (NonFiniteOperandError, a NonFiniteLossError): the quantizers record it in a device-side flag
  (quant.nvfp4.FiniteCheck) instead of synchronizing, and each step reads the flag together
  with the loss terms in one device-to-host transfer, after the backward and before the
  optimizer step.
- `compile` (off | on | auto = CUDA only): the steps run through quant.compile.compile_model
  (torch.compile, fullgraph, bit-exact quantization); the module itself stays eager for
  telemetry and checkpoints.
- Device: CUDA with bf16 autocast when available (`precision="auto"`), fp32 on CPU, where the run
  is deterministic (torch.use_deterministic_algorithms) and bitwise reproducible for a fixed
  number of threads, across a stop and restore included.

Observers: `tracker` (trainables.tracking.TrialTracker, or anything with log_epoch, log_final,
log_artifact and state) and `callbacks` (see `Callback`), called after each epoch's checkpoint is
on disk — the Ray trainable reports that folder to Ray Tune.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from quant import nvfp4
from trainables.checkpoint import (
    STATE_FILE,
    capture_rng,
    load_checkpoint,
    read_tracking_state,
    restore_rng,
    save_checkpoint,
)
from trainables.config import TrialConfig
from trainables.failures import FAILURE_TAGS, NonFiniteLoss, record_failure
from trainables.losses import SegmentationLoss
from trainables.metrics import PixelScores, SplitMetrics

#: Per-epoch keys that measure time, not results (left out of exactness comparisons).
TIMING_KEYS = frozenset({"epoch_time_s"})


#: Training diverged (trainables.failures: never retried).
NonFiniteLossError = NonFiniteLoss


class NonFiniteOperandError(NonFiniteLossError):
    """An NVFP4 operand (activation, weight or gradient) held NaN or inf during a step."""


class InjectedFailure(RuntimeError):
    """Raised by TestHooks.fail_at_epoch (restore tests only)."""


# --------------------------------------------------------------------------- observers


class Callback:
    """Hooks called by the loop; the checkpoint folder is complete when they run."""

    def on_epoch_end(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        pass

    def on_train_end(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        pass


@dataclass
class RunResult:
    config: TrialConfig
    final_metrics: dict[str, float]
    history: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool
    checkpoint_dir: Path
    artifacts_dir: Path
    artifacts: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- seeds and device


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed for one stream of the run, independent of every other stream."""
    digest = hashlib.sha256(":".join(map(str, (seed, *tags))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seed_globals(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(config: TrialConfig, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA ("auto" or "bf16"), bf16 on CPU only when asked; None means fp32."""
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


# --------------------------------------------------------------------------- data


def data_cache_root(config: TrialConfig) -> Path:
    """config.cache_dir, else $SWEEP_DATA_CACHE, else ~/.cache/nvfp4-sweep (as trainables.cache)."""
    root = config.cache_dir or os.environ.get("SWEEP_DATA_CACHE") or "~/.cache/nvfp4-sweep"
    return Path(root).expanduser()


def resolve_data_root(config: TrialConfig) -> Path:
    """The dataset folder: `data_path`, or the synthetic dataset, generated once per parameters."""
    if config.data_path is not None:
        root = Path(config.data_path)
        if not root.is_dir():
            raise FileNotFoundError(f"data_path {root} is not a folder (expected kaggle_3m layout)")
        return root
    from trainables.synth import write_synthetic

    params = config.synthetic.model_dump()
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    root = data_cache_root(config) / "synthetic" / tag
    root.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent trials on one node share the folder: the first writes it under the lock.
    with open(root.parent / f"{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "data.csv").is_file():
            write_synthetic(root, force=True, **params)
    return root


def build_datasets_for(config: TrialConfig, data_root: Path):
    from trainables.datasets import build_datasets

    return build_datasets(
        data_root,
        image_size=config.image_size,
        split=config.split,
        fold=config.fold_index,
        n_folds=config.n_folds,
        split_seed=config.split_seed,
        seed=config.seed,
        cache_dir=None if config.cache_dir is None else Path(config.cache_dir) / "data",
        augment=config.augment,
    )


# --------------------------------------------------------------------------- model and optimizer


def build_model_for(
    config: TrialConfig, sr_generator: torch.Generator, device: torch.device | str | None = None
) -> torch.nn.Module:
    """Seed, build, then quantize: the initial weights never depend on the recipe (nor on the
    backend). The recipe is the config's own definition (a spec may have declared it); the TE
    backend swaps the Linear layers for transformer_engine's on `device` (quant.te)."""
    import models
    import quant

    overrides = {"img_size": config.image_size, **config.model_overrides}
    torch.manual_seed(config.seed)
    model = models.build_model(config.model_arch, config.scale, **overrides)
    model.check_input_size(config.image_size, config.image_size)
    recipe = config.recipe_object()
    if config.backend == "te":
        from quant.te import te_model

        return te_model(model.to(device or "cuda"), recipe)
    return quant.prepare(model, recipe, generator=sr_generator)


def compile_enabled(config: TrialConfig, device: torch.device) -> bool:
    """`compile: on | off | auto`; auto compiles on CUDA only (see BENCHMARKS.md: on the CPU
    the compile time outweighs the step-time gain for runs of this study's length)."""
    if config.backend == "te":  # TE runs its own kernels (compile: on is refused at plan time)
        return False
    return config.compile == "on" or (config.compile == "auto" and device.type == "cuda")


def step_model_for(config: TrialConfig, model: torch.nn.Module, device: torch.device):
    """What runs the training and evaluation steps: `model`, or `model` compiled (fullgraph,
    bit-exact settings; same parameters). Compiled kernels are cached in one folder per node
    (TORCHINDUCTOR_CACHE_DIR, default <data cache>/inductor), so the trials of a node after
    the first load them instead of compiling again."""
    if not compile_enabled(config, device):
        return model
    from quant.compile import compile_model

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(data_cache_root(config) / "inductor"))
    return compile_model(model)


def build_optimizer(config: TrialConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    kinds = {"adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}
    return kinds[config.optimizer](
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )


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
        artifacts_dir: str | os.PathLike | None = None,
        datasets: Any = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(device)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.artifacts_dir = Path(artifacts_dir or self.checkpoint_dir / "artifacts")
        self.tracker, self.callbacks = tracker, list(callbacks)
        self.amp_dtype = autocast_dtype(config, self.device)
        if self.device.type == "cpu":
            # The eager flag of torch.use_deterministic_algorithms(True, warn_only=True). The
            # public setter also imports torch._inductor to set the compiler's flag: 2 s per
            # trial process on 2 cores, for a compiler this loop never uses.
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
        self.first_epoch_this_attempt = 1
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
        self.first_epoch_this_attempt = self.epoch + 1
        restore_rng(state["rng"], self.sr_generator)

    # ------------------------------------------------------------------ epochs

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loader(self, dataset, *, shuffle: bool, epoch: int) -> DataLoader:
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
        for step, (x, y) in enumerate(self._loader(self.data.train, shuffle=True, epoch=epoch)):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with nvfp4.deferred(self.finite_check):
                with self._autocast():
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
        for x, y in self._loader(dataset, shuffle=False, epoch=0):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            with nvfp4.deferred(self.finite_check), self._autocast():
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
        if self.config.test_hooks and self.config.test_hooks.epoch_delay_s:
            time.sleep(self.config.test_hooks.epoch_delay_s)
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
        hooks = self.config.test_hooks
        while self.final_metrics is None and self.epoch < self.config.epochs:
            if self.stopped_early:
                break
            epoch = self.epoch + 1
            if hooks and hooks.fail_at_epoch == epoch and self.first_epoch_this_attempt < epoch:
                raise InjectedFailure(f"injected failure at the start of epoch {epoch}")
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
            artifacts_dir=self.artifacts_dir,
            artifacts=artifacts,
        )

    def finish(self) -> list[Path]:
        """Best weights -> final validation and test metrics, artifacts, final checkpoint."""
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
        paths = write_artifacts(self, curves)
        self.final_metrics = final
        self.save()
        if self.tracker is not None:
            self.tracker.log_final(final)
            for path in paths:
                self.tracker.log_artifact(path)
        return paths


def train(
    config: TrialConfig,
    *,
    checkpoint_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    resume_from: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    tracker: Any = None,
    callbacks: Iterable[Callback] = (),
    artifacts_dir: str | os.PathLike | None = None,
) -> RunResult:
    """Train one run to the end (resuming from `resume_from` if given); see TrainingRun."""
    return TrainingRun(
        config,
        checkpoint_dir=checkpoint_dir,
        data_root=data_root,
        resume_from=resume_from,
        device=device,
        tracker=tracker,
        callbacks=callbacks,
        artifacts_dir=artifacts_dir,
    ).fit()


# --------------------------------------------------------------------------- tracking lifecycle
# Shared by the Ray trainable and `sweep train-one`: the tracker is opened before the loop and
# finished after it, whatever happens, with the status that says how the run ended.

TRACKING_DIR = "tracking"  # the MLflow journal, inside the checkpoint so it travels with it


def build_tracker(config: TrialConfig, checkpoint_dir: Path):
    """The trial's MLflow tracker, reopening the run id the checkpoint kept (None: no tracking).
    With an outbox, records still undelivered at the end are kept there (trainables.outbox). An
    entry an earlier attempt of this trial left there is dropped: this attempt supersedes it
    (its restored journal holds the same records, and its own end sets the run's status)."""
    if config.tracking is None:
        return None
    from trainables.tracking import TrialTracker, resolve_tracking_uri

    recipe = config.recipe_object()
    sha = config.code_version.partition("+g")[2]
    tags = {
        "sweep": config.tracking.experiment,
        "trial_key": config.run_key,  # a search sample's own key, else the grid point's
        "arch": config.arch,
        "scale": config.scale,
        "recipe": config.recipe,
        "recipe_id": "" if recipe.paper_id is None else str(recipe.paper_id),
        "seed": str(config.seed),
        "fold": config.fold,
        "split_seed": str(config.split_seed),
        "config_hash": config.config_hash,
        "git_sha": sha or "unknown",
        **config.tracking.tags,
    }
    params = config.model_dump(mode="json", exclude={"tracking", "test_hooks", "sample_suffix"})
    keep_pending = None
    if config.tracking.outbox:
        from trainables.outbox import Outbox, keeper

        outbox = Outbox.at(config.tracking.outbox, config.tracking.outbox_endpoint)
        outbox.discard(tags["trial_key"])
        uri = resolve_tracking_uri(config.tracking.tracking_uri)
        keep_pending = keeper(outbox, tags["trial_key"], uri)
    tracker = TrialTracker(
        tracking_uri=config.tracking.tracking_uri,
        experiment=config.tracking.experiment,
        trial_key=tags["trial_key"],
        tags=tags,
        params=params,
        buffer_dir=checkpoint_dir / TRACKING_DIR,
        parent_run_id=config.tracking.parent_run_id,
        run_id=read_tracking_state(checkpoint_dir).get("run_id"),
        finish_timeout_s=config.tracking.finish_timeout_s,
        keep_pending=keep_pending,
    )
    tracker.start()
    return tracker


def run_tracked(
    config: TrialConfig,
    checkpoint_dir: Path,
    *,
    callbacks: list[Callback],
    data_root: Path | None = None,
    device: str | None = None,
    artifacts_dir: Path | None = None,
):
    """The loop with its tracker's lifecycle around it; resumes if `checkpoint_dir` holds one.
    Artifacts default to `checkpoint_dir`/artifacts, so Tune persists them with the checkpoint.

    Around the loop, for the MLflow UI: the data as the run's dataset input, system metrics when
    asked for (trainables.system_metrics), and the run's description once it ends, finished or
    not (trainables.run_notes)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    resume = checkpoint_dir if (checkpoint_dir / STATE_FILE).is_file() else None
    tracker = build_tracker(config, checkpoint_dir)
    status, result, error, monitor = "FAILED", None, None, None
    try:
        root = Path(data_root) if data_root is not None else resolve_data_root(config)
        run = TrainingRun(
            config,
            checkpoint_dir=checkpoint_dir,
            data_root=root,
            resume_from=resume,
            device=device,
            tracker=tracker,
            callbacks=callbacks,
            artifacts_dir=artifacts_dir,
        )
        monitor = _observe(tracker, config, run, root)
        result = run.fit()
        status = "FINISHED"
        return result
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    except Exception as exc:
        error = exc
        if tracker is not None:
            record_failure(tracker, exc)
        raise
    finally:
        _close_tracking(tracker, config, status, result, error, monitor)


def _observe(tracker, config: TrialConfig, run: TrainingRun, root: Path):
    """Log the run's dataset input; start its system-metrics monitor (None if not wanted)."""
    if tracker is None:
        return None
    from trainables import run_notes, system_metrics

    tracker.log_dataset(run_notes.dataset_input(config, run.data, root))
    return system_metrics.start(config.tracking, tracker.run_id, run.device.type)


def _close_tracking(tracker, config: TrialConfig, status: str, result, error, monitor) -> None:
    if tracker is None:
        return
    from trainables import run_notes, system_metrics

    system_metrics.stop(monitor)  # first: the monitor logs only while the run is RUNNING
    try:
        tracker.set_note(run_notes.trial_note(config, result, error))
    except Exception as exc:  # a description is not worth masking how the run ended
        logging.getLogger(__name__).warning("%s: no run description: %s", config.trial_key, exc)
    if status == "FINISHED":  # an earlier attempt may have failed
        tracker.log_tags({}, delete=FAILURE_TAGS)
    tracker.finish(status)


# --------------------------------------------------------------------------- artifacts
# Small files only (the paper's code pickled hundreds of MB of probabilities per run): the PR
# curve is downsampled to <= 512 points and the histogram has 100 bins.


def write_artifacts(run: TrainingRun, curves: dict[str, SplitMetrics]) -> list[Path]:
    """config.json, history.json, pr_curve[_val].json, pred_hist[_val].json (no suffix: test),
    two PNGs, the quantization-error table, and the best weights when tracking asks for them."""
    out = run.artifacts_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = [run.config.save(out / "config.json"), _write_json(out / "history.json", run.history)]
    figure_data = {}
    for split, result in curves.items():
        suffix = "" if split == "test" else f"_{split}"
        hist = {"split": split, **result.histogram}
        pr = {"split": split, **result.pr_curve}
        paths.append(_write_json(out / f"pr_curve{suffix}.json", pr))
        paths.append(_write_json(out / f"pred_hist{suffix}.json", hist))
        figure_data[split] = (pr, hist)
    paths.extend(_plot_figures(out, figure_data, run.config.trial_key))
    table = quantization_table(run)
    if table is not None:
        paths.append(_write_json(out / "quantization_error.json", table))
    tracking = run.config.tracking
    if tracking is not None and tracking.log_weights and run.best_model is not None:
        weights = out / "best_model.pt"
        torch.save({k: v.cpu() for k, v in run.best_model.items()}, weights)
        paths.append(weights)
    return paths


def quantization_table(run: TrainingRun) -> list[dict] | None:
    """Per quantized layer and operand (FPROP, DGRAD, WGRAD): SQNR in dB and the zero-scale
    fraction, measured by quant.telemetry on one forward + backward of the first validation
    batch with the final weights. None when nothing is quantized (the baseline recipe).

    Eval mode (no dropout draw), gradients discarded, and the SR generator put back afterwards:
    measuring leaves no trace in the run's state."""
    import quant.telemetry
    from quant.modules import converted_layers

    if not converted_layers(run.model):
        return None
    x, y = next(iter(run._loader(run.data.val, shuffle=False, epoch=0)))
    x, y = x.to(run.device), y.to(run.device)
    sr_state = run.sr_generator.get_state()
    run.model.eval()
    with quant.telemetry.collect(run.model):
        with run._autocast():
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

    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    for split, (pr, _) in data.items():
        ax.step(pr["recall"], pr["precision"], where="post", label=split)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend()
    fig.subplots_adjust(left=0.17, bottom=0.13, right=0.96, top=0.91)  # tight_layout is slow
    fig.savefig(out / "pr_curve.png", dpi=100)

    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    for split, (_, hist) in data.items():
        edges, counts = np.asarray(hist["bin_edges"]), np.asarray(hist["counts"])
        ax.stairs(np.maximum(counts, 0.5), edges, label=split)  # 0.5: empty bins on a log axis
    ax.set(xlabel="predicted probability", ylabel="pixels", yscale="log", title=title)
    ax.legend()
    fig.subplots_adjust(left=0.17, bottom=0.13, right=0.96, top=0.91)  # tight_layout is slow
    fig.savefig(out / "pred_hist.png", dpi=100)
    return [out / "pr_curve.png", out / "pred_hist.png"]
