"""A run's parts, built from its trial config: seeds, device and precision, model, step, optimizer.

The training loop (trainables.loop) owns the run; this module only builds what it owns, under the
protocol of docs/study.md ("Training"):

- Seeds: every random stream of a run (initial weights, dropout, data order, stochastic rounding)
  has a seed of its own, derived from the trial's seed and the stream's name (`derive_seed`), so
  no stream's draws shift another's.
- The model: seed torch with the trial's seed, build, *then* quantize (`build_model_for`):
  `quant.prepare` swaps layers but keeps the very Parameters, so the initial weights of one
  (arch, scale, seed) are the same for every recipe.
- The step: the model itself, or the model compiled (`step_model_for`, `compile: on | off |
  auto`, auto = off for now, see `compile_enabled`); compiled kernels are cached in the
  `inductor/` folder of the node's cache root (trainables.cache.cache_root).
- Device and precision: CUDA when there is one; bf16 autocast on CUDA (`precision: auto`), fp32
  on the CPU.
"""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch

from trainables.cache import cache_root
from trainables.config import TrialConfig

__all__ = [
    "autocast_dtype",
    "build_model_for",
    "build_optimizer",
    "compile_enabled",
    "derive_seed",
    "resolve_device",
    "seed_globals",
    "step_model_for",
]

INDUCTOR_DIR = "inductor"  # torch.compile's kernel cache, a subfolder of the cache root

# --------------------------------------------------------------------------- seeds and device


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed for one stream of the run, independent of every other stream."""
    digest = hashlib.sha256(":".join(map(str, (seed, *tags))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seed_globals(seed: int) -> None:
    """Seed the global generators a run draws from: torch, numpy and Python's."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(config: TrialConfig, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA ("auto" or "bf16"), bf16 on CPU only when asked; None means fp32."""
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


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
    """`compile: on | off | auto`; auto is off on every device for now (BENCHMARKS.md, issue
    18). On the CPU the compile time outweighs the step-time gain for runs of this study's
    length. On CUDA the one GPU measured so far (an H200, torch 2.11) gave every compiled
    quantized layer all-zero gradients; the cause is fixed and the fix verified with torch 2.11
    on the CPU, not yet on a GPU, so `on` is the user's choice there after `python -m
    bench.gpu` passes (its golden section runs the compiled-vs-eager CUDA tests)."""
    if config.backend == "te":  # TE runs its own kernels (compile: on is refused at plan time)
        return False
    return config.compile == "on"


def step_model_for(config: TrialConfig, model: torch.nn.Module, device: torch.device):
    """What runs the training and evaluation steps: `model`, or `model` compiled (fullgraph,
    bit-exact settings; same parameters). Compiled kernels are cached in one folder per node
    (TORCHINDUCTOR_CACHE_DIR, default <cache root>/inductor), so the trials of a node after
    the first load them instead of compiling again."""
    if not compile_enabled(config, device):
        return model
    from quant.compile import compile_model

    kernels = cache_root(config.cache_dir) / INDUCTOR_DIR
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(kernels))
    return compile_model(model)


def build_optimizer(config: TrialConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The protocol's optimizer of the arch (AdamW or Adamax) with the config's lr and decay."""
    kinds = {"adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}
    return kinds[config.optimizer](
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
