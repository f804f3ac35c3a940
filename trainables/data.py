"""A trial's data: where it comes from, and its train/validation/test datasets.

A trial config names its data one of two ways (trainables.config): `data_path`, a kaggle_3m
folder, or `synthetic`, the parameters of a generated dataset (trainables.synth). A synthetic
dataset is generated once per parameters into the `synthetic/` folder of the node's cache root
(trainables.cache.cache_root), under a lock, so the trials of a node share it:

    root = resolve_data_root(config)              # the folder, generated first if need be
    data = build_datasets_for(config, root)       # SplitDatasets of the trial's split and fold

The datasets themselves (the decoded cache, the split by patient, augmentation) are
trainables.datasets'.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from trainables.cache import DECODED_DIR, cache_root
from trainables.config import TrialConfig

if TYPE_CHECKING:
    from trainables.datasets import SplitDatasets

__all__ = ["build_datasets_for", "resolve_data_root"]

SYNTHETIC_DIR = "synthetic"  # generated datasets, a subfolder of the cache root


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
    root = cache_root(config.cache_dir) / SYNTHETIC_DIR / tag
    root.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent trials on one node share the folder: the first writes it under the lock.
    with open(root.parent / f"{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "data.csv").is_file():
            write_synthetic(root, force=True, **params)
    return root


def build_datasets_for(config: TrialConfig, data_root: Path) -> SplitDatasets:
    """The trial's train/val/test datasets of the folder `data_root`, decoded into the cache."""
    # Imported here: sklearn and albumentations cost seconds, and the sweep's driver imports
    # this module (through the trainable) without ever loading data.
    from trainables.datasets import build_datasets

    return build_datasets(
        data_root,
        image_size=config.image_size,
        split=config.split,
        fold=config.fold_index,
        n_folds=config.n_folds,
        split_seed=config.split_seed,
        seed=config.seed,
        cache_dir=cache_root(config.cache_dir) / DECODED_DIR,
        augment=config.augment,
    )
