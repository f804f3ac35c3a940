"""One training run: its config, data, loss, metrics, the loop, and the Ray Tune trainable.

    from trainables import TrialConfig, train
    config = TrialConfig(arch="cnn", scale="tiny", recipe="2d_rht_sr", seed=2026,
                         synthetic={"size": 64}, image_size=64, epochs=3)
    result = train(config, checkpoint_dir="runs/demo")      # no Ray involved
    result.final_metrics["test_auprc"]

- `config`: TrialConfig, frozen and validated, with `trial_key` and `config_hash`.
- `lgg`, `splits`, `augment`, `cache`, `synth`, `datasets`: the LGG data (or a synthetic twin).
- `losses`: BCE + Tversky. `metrics`: pixel AUPRC (== scikit-learn) and friends, streamed.
- `checkpoint`: atomic, exact-resume checkpoints. `loop`: the protocol (no Ray import), with the
  run's parts from `factories` and `data`, its hooks (`callbacks`) and files (`artifacts`);
  `tracked_run`: the loop with its MLflow run around it.
- `trainable`: `train_trial`, the Ray Tune function trainable. `tracking`: MLflow per trial.

Names below are imported on first use, so `import trainables.lgg` stays light (no torch/ray).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrialConfig": "trainables.config",
    "ConfigError": "trainables.config",
    "train": "trainables.loop",
    "TrainingRun": "trainables.loop",
    "RunResult": "trainables.loop",
    "train_trial": "trainables.trainable",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainables' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
