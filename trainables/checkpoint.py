"""Checkpoints: everything a run needs to continue exactly, written atomically every epoch.

A checkpoint is a folder:

    state.pt       torch.save of one dict (loadable with weights_only=True): format, config_hash,
                   config, epoch (last completed, 1-based), finished, model, optimizer, scheduler,
                   early_stopping, best {val_loss, epoch, model}, history, rng, tracking,
                   final_metrics
    config.json    the TrialConfig, human-readable, beside the weights
    tracking.json  the tracking run id alone, so a restarting trial can reopen its MLflow run
                   before it loads the weights

Why restoring is *exact* (N epochs in one go == N/2, stop, restore, N/2, bitwise on CPU): every
source of randomness is either saved here or derived from (seed, epoch):
- the global torch RNG (dropout, DropPath), numpy's and Python's global RNGs, the CUDA RNGs, and
  the run's stochastic-rounding generator are saved at the end of each epoch, after validation,
  at the very point where an uninterrupted run would go on from;
- data order comes from a generator seeded by (seed, epoch) and augmentation from
  (seed, epoch, sample index) (trainables.datasets), so neither has state to save.
Model, optimizer (moments and step counts), plateau scheduler and early-stopping counters are
saved as their state dicts; the best-so-far weights ride along.

Atomic writes: each file goes to a temporary name in the same folder, is flushed and fsync'd, then
`os.replace`d over the old one (atomic on POSIX), and the folder is fsync'd so the rename itself
survives a crash. A kill at any moment leaves either the previous checkpoint or the new one.
`load_checkpoint` refuses a checkpoint written for a different config (hash mismatch) and names
the fields that differ, and raises CorruptCheckpoint naming the file when it cannot be read (a
truncated upload, a damaged disk). `restore_newest_intact` then falls back to the newest older
checkpoint that reads, with a warning naming both.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.config import TrialConfig, config_diff
from trainables.failures import FAILURE_FILE
from trainables.files import atomic_write

logger = logging.getLogger(__name__)

FORMAT = 1
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
TRACKING_FILE = "tracking.json"


class CheckpointMismatch(ValueError):
    """The checkpoint belongs to another config (a different experiment)."""


class CorruptCheckpoint(ValueError):
    """A checkpoint file that cannot be read (truncated, damaged); the message names it."""


# --------------------------------------------------------------------------- RNG state


def capture_rng(sr_generator: torch.Generator | None) -> dict[str, Any]:
    """Every global RNG plus the run's stochastic-rounding generator (weights_only-safe)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
        "sr": sr_generator.get_state() if sr_generator is not None else None,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], sr_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_as_tuple(state["python"]))
    if sr_generator is not None:
        if state["sr"] is None:
            raise CheckpointMismatch("checkpoint has no stochastic-rounding generator state")
        sr_generator.set_state(state["sr"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    # torch.load(weights_only=True) may hand back lists where random.getstate() had tuples.
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


# --------------------------------------------------------------------------- save / load


def save_checkpoint(
    directory: str | os.PathLike, state: dict[str, Any], config: TrialConfig
) -> Path:
    """Write `state` (see module docstring) and the config into `directory`, atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        **state,
        "format": FORMAT,
        "config_hash": config.config_hash,
        "config": config.to_dict(),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(directory / STATE_FILE, buffer.getvalue())
    atomic_write(directory / CONFIG_FILE, (config.to_json() + "\n").encode())
    tracking = state.get("tracking") or {}
    atomic_write(directory / TRACKING_FILE, json.dumps(tracking).encode())
    return directory


def load_checkpoint(
    directory: str | os.PathLike,
    config: TrialConfig | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint folder; with `config`, insist that it was written for that config."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise CorruptCheckpoint(f"{path} cannot be read: {type(exc).__name__}: {exc}") from exc
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if found != FORMAT:
        raise CheckpointMismatch(f"{path}: checkpoint format {found}, expected {FORMAT}")
    if config is not None and state["config_hash"] != config.config_hash:
        raise CheckpointMismatch(_mismatch_message(path, state, config))
    return state


def read_tracking_state(directory: str | os.PathLike) -> dict[str, Any]:
    """The tracking state (e.g. {"run_id": ...}) of a checkpoint, without loading the weights."""
    path = Path(directory) / TRACKING_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpoint(f"{path} cannot be read: {exc}") from exc


def check_intact(directory: str | os.PathLike) -> None:
    """Raise CorruptCheckpoint if a checkpoint folder cannot be restored from. A folder holding
    only a failure mark (trainables.failures) is intact: it restores to that failure."""
    directory = Path(directory)
    if (directory / FAILURE_FILE).is_file() and not (directory / STATE_FILE).is_file():
        return
    read_tracking_state(directory)
    load_checkpoint(directory)


def restore_newest_intact(
    candidates: Iterable[tuple[str, Callable[[Path], None]]], target: str | os.PathLike
) -> str:
    """Fetch checkpoints into `target`, newest first, until one is intact; returns its name.

    `candidates` are (name, fetch) pairs, `fetch(target)` copying that checkpoint's files into
    the empty folder `target`. A checkpoint that cannot be read is skipped with a warning naming
    it and the one restored instead; none intact raises the first one's CorruptCheckpoint.
    """
    target = Path(target)
    skipped: list[tuple[str, CorruptCheckpoint]] = []
    for name, fetch in candidates:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        fetch(target)
        try:
            check_intact(target)
        except CorruptCheckpoint as exc:
            # Name the checkpoint where it is kept, not the local copy that was read.
            skipped.append((name, CorruptCheckpoint(str(exc).replace(str(target), name))))
            continue
        for _, exc in skipped:
            logger.warning("%s; restoring the checkpoint %s instead", exc, name)
        return name
    shutil.rmtree(target, ignore_errors=True)
    if skipped:
        raise skipped[0][1]
    raise FileNotFoundError("no checkpoint to restore")


def _mismatch_message(path: Path, state: dict[str, Any], config: TrialConfig) -> str:
    differing = config_diff(state["config"], config.to_dict())
    details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differing.items())
    return (
        f"{path} was written for config hash {state['config_hash'][:12]}, but this run's config "
        f"hashes to {config.config_hash[:12]}; differing fields: {details or '(none listed)'}. "
        "Resume only with the config that wrote the checkpoint, or start a fresh run."
    )
