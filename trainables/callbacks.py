"""What the training loop calls while it runs: the `Callback` hooks, and those a config names.

A `Callback` observes one run (trainables.loop.TrainingRun); every hook does nothing unless
overridden, in the order the loop calls them:

    on_epoch_start(epoch, run)          before epoch `epoch` (1-based) trains
    on_epoch_end(metrics, checkpoint_dir)
                                        the epoch's record; its checkpoint is on disk
    on_final_evaluation(run, curves) -> files
                                        the best weights evaluated on validation and test
                                        (`curves`: trainables.metrics.SplitMetrics per split);
                                        the files returned are the run's artifacts, logged by
                                        its tracker (trainables.artifacts writes them)
    on_train_end(metrics, checkpoint_dir)
                                        the final metrics; the final checkpoint is on disk (also
                                        when the run was restored from a finished checkpoint)

The code that starts a run passes its callbacks (the Ray trainable its Tune reporter, the
entry points an `ArtifactsCallback`); a trial config adds its own by import path (the
`callbacks` field of trainables.config.TrialConfig, `CallbackRef`), which `config_callbacks`
imports and builds in the process that trains. That field is not hashed: a callback may watch,
log, slow down or stop a run, never change what it computes. The restore tests inject their
failures this way (tests/support/hooks.py).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.config import ConfigError, TrialConfig

if TYPE_CHECKING:  # the loop imports this module
    from trainables.loop import TrainingRun
    from trainables.metrics import SplitMetrics

__all__ = ["Callback", "config_callbacks"]


class Callback:
    """Hooks called by the loop (see the module docstring); each does nothing by default."""

    def on_epoch_start(self, epoch: int, run: TrainingRun) -> None:
        pass

    def on_epoch_end(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        pass

    def on_final_evaluation(self, run: TrainingRun, curves: dict[str, SplitMetrics]) -> list[Path]:
        return []

    def on_train_end(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        pass


def config_callbacks(config: TrialConfig) -> list[Callback]:
    """The callbacks `config.callbacks` names, each built fresh: `factory(**args)`.

    Raises ConfigError naming the field, the entry and its path when one cannot be imported, is
    not callable with its args, or does not build a Callback."""
    built = []
    for index, ref in enumerate(config.callbacks):
        where = f"callbacks[{index}] {ref.path!r}"
        factory = _resolve(ref.path, where)
        try:
            callback = factory(**ref.args)
        except TypeError as err:
            raise ConfigError(f"{where}: cannot be called with args {ref.args}: {err}") from err
        if not isinstance(callback, Callback):
            raise ConfigError(
                f"{where}: built a {type(callback).__name__}, not a trainables.callbacks.Callback"
            )
        built.append(callback)
    return built


def _resolve(path: str, where: str) -> Any:
    module_name, _, attribute = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{where}: cannot import module {module_name!r}: {err}") from err
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"{where}: module {module_name!r} has no attribute {attribute!r}")
        found = getattr(found, part)
    return found
