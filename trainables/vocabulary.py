"""The study's vocabulary: its archs, scales and folds, and the name of a grid point.

Declared here once, in a module light enough for the command line to import (no torch, no
pydantic); the trial config, the sweep spec, the planner, the analysis, the figures and the CLI
take them from here:

- archs (`ARCHS`): the four architecture variants of docs/study.md ("Training"), each a model
  registry arch with its optimizer row (`ARCH_DEFAULTS`): the ViT twice, once per optimizer;
- scales (`scales()`): the model registry's presets (models.registry), smallest first;
- folds (`folds()`): "holdout", or f0, f1, ... of k-fold cross-validation, the protocol's 5 by
  default (`N_FOLDS`, docs/study.md "Data"); trainables.splits cuts any count from 2 (two
  patients per fold), bounded at `MAX_FOLDS`;
- a grid point's `trial_key`: "{arch}-{scale}-{recipe}-s{seed}-{fold}", over `GRID_AXES`; an
  Optuna sample of it adds `sample_suffix`, 8 hex digits of the values it sampled.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Per sweep arch: (optimizer, lr, weight decay, model arch). docs/study.md "Training".
ARCH_DEFAULTS: dict[str, tuple[str, float, float, str]] = {
    "cnn": ("adamax", 5e-4, 0.0, "cnn"),
    "vit_adamw": ("adamw", 1e-4, 1e-4, "vit"),
    "vit_adamax": ("adamax", 5e-4, 0.0, "vit"),
    "swin": ("adamw", 1e-4, 1e-4, "swin"),
}
#: The sweep's archs, in the study's order.
ARCHS = tuple(ARCH_DEFAULTS)

N_FOLDS = 5
MAX_FOLDS = 10

#: The axes of the sweep's grid, in the order trials are expanded and keys are written.
GRID_AXES = ("arch", "scale", "recipe", "seed", "fold")


def scales(arch: str | None = None) -> tuple[str, ...]:
    """The model registry's scale presets, smallest first: of a sweep `arch`, or of any arch."""
    from models.registry import all_scales, list_scales  # torch: only when a scale is needed

    return tuple(all_scales() if arch is None else list_scales(ARCH_DEFAULTS[arch][3]))


def folds(n_folds: int = MAX_FOLDS) -> tuple[str, ...]:
    """The fold choices of a trial: "holdout", or one of `n_folds` cross-validation folds."""
    return ("holdout", *(f"f{i}" for i in range(n_folds)))


def trial_key(arch: str, scale: str, recipe: str, seed: int, fold: str) -> str:
    """The human name of a grid point: "{arch}-{scale}-{recipe}-s{seed}-{fold}"."""
    return f"{arch}-{scale}-{recipe}-s{seed}-{fold}"


def sample_suffix(sampled: dict[str, Any]) -> str:
    """8 hex digits naming an Optuna sample by the values it sampled (`TrialConfig.run_key`)."""
    canonical = json.dumps(sampled, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def check_choice(value: str, valid: tuple[str, ...], what: str) -> str:
    """`value` if it is one of `valid`, else a ValueError naming the valid choices."""
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid choices: {', '.join(valid)}")
    return value
