"""What a trial's MLflow run says about itself: its description and the dataset it trained on.

The MLflow UI renders a run's ``mlflow.note.content`` tag as Markdown (the run page's
"Description"), and lists a run's dataset inputs in the runs table's "Dataset" column and its
dataset filter. Both are derived here from the trial config and the training result, with no
MLflow import, so they are plain data for the tracker's journal (trainables.journal).

- `trial_note(config, result, error)`: one paragraph: trial key, the recipe in words, the final
  validation/test AUPRC of the best weights, the best epoch and why training stopped (or the error
  that ended it).
- `dataset_input(config, datasets, root)`: ``{"name", "digest", "source_type", "source",
  "profile"}``. The digest is the data fingerprint of the decoded-data cache
  (trainables.cache.fingerprint: file list, sizes, modification times, image size), cut to 16 hex
  digits as in the cache's folder names, so the digest names the exact cache entry the trial read.
  The source is the dataset folder, or "synthetic" with the generator's parameters.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from trainables.config import TrialConfig

DIGEST_LENGTH = 16

_ARCH_WORDS = {
    "cnn": "CNN (U-Net)",
    "vit_adamw": "ViT (AdamW)",
    "vit_adamax": "ViT (Adamax)",
    "swin": "Swin transformer",
}


def recipe_in_words(name: str) -> str:
    """``**NVFP4 Full** (`nvfp4`: every operand 1x16, ...)``, from the recipe registry."""
    import quant

    recipe = quant.get_recipe(name)
    display = getattr(recipe, "display_name", "") or name
    description = getattr(recipe, "description", "")
    return f"**{display}** (`{name}`{': ' + description if description else ''})"


def trial_note(
    config: TrialConfig,
    result: Any = None,
    error: BaseException | None = None,
) -> str:
    """The run's description (Markdown, one paragraph). ``result`` is the loop's RunResult (None
    when the run did not finish); ``error`` what ended it, if anything did."""
    split = "holdout split" if config.fold == "holdout" else f"fold {config.fold[1:]}"
    # A search sample runs under its own key (the grid key plus a hash of its sampled values).
    key = config.run_key
    lines = [
        f"**{key}**: {_ARCH_WORDS.get(config.arch, config.arch)} at scale "
        f"`{config.scale}`, trained with {recipe_in_words(config.recipe)}, seed {config.seed}, "
        f"{split} (split seed {config.split_seed}), {_data_words(config)}."
    ]
    final = getattr(result, "final_metrics", None)
    if final:
        lines.append(
            f"Best weights from epoch {int(final['best_epoch'])}: "
            f"val AUPRC {_number(final.get('val_auprc'))}, "
            f"test AUPRC {_number(final.get('test_auprc'))}."
        )
        lines.append(_stop_reason(config, result))
    elif error is not None:
        message = (str(error).strip().splitlines() or [""])[0][:500]
        lines.append(f"Did not finish: `{type(error).__name__}`: {message}")
    else:
        lines.append("Did not finish (interrupted).")
    return " ".join(lines)  # the tracker cuts it to MLflow's longest tag value if need be


def _data_words(config: TrialConfig) -> str:
    if config.synthetic is not None:
        s = config.synthetic
        return (
            f"synthetic data ({s.patients} patients x {s.slices_per_patient} slices, seed {s.seed})"
            f" at {config.image_size} px"
        )
    return f"data `{config.data_path}` at {config.image_size} px"


def _stop_reason(config: TrialConfig, result: Any) -> str:
    epochs = int(result.final_metrics.get("epochs_run", len(result.history)))
    if result.stopped_early:
        return (
            f"Stopped early after epoch {epochs} of {config.epochs}: the validation loss did not "
            f"drop by more than {config.early_stop_min_delta:g} for "
            f"{config.early_stop_patience} epochs after the {config.early_stop_warmup}-epoch "
            "warmup."
        )
    return f"Ran the full budget of {config.epochs} epochs."


def _number(value: Any) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return "n/a"


# --------------------------------------------------------------------------- the dataset input


def dataset_input(config: TrialConfig, datasets: Any, root: Path) -> dict[str, Any]:
    """The trial's data as an MLflow dataset input (plain data; see the module docstring).

    ``datasets`` is the loop's SplitDatasets (train/val/test); their shared source carries the
    cache fingerprint. Without one (a source that reads the files directly), the digest hashes
    the folder's path and the data version instead."""
    fingerprint = getattr(getattr(datasets.train, "source", None), "fingerprint", None)
    if not fingerprint:
        basis = json.dumps([str(root), config.data_version], sort_keys=True)
        fingerprint = hashlib.sha256(basis.encode()).hexdigest()
    profile = {
        "image_size": config.image_size,
        "split": config.split if config.fold == "holdout" else f"kfold/{config.fold}",
        "split_seed": config.split_seed,
        **{f"{name}_slices": len(getattr(datasets, name)) for name in ("train", "val", "test")},
        **{
            f"{name}_patients": len(getattr(getattr(datasets, name), "patients", ()))
            for name in ("train", "val", "test")
        },
    }
    if config.synthetic is not None:
        params = config.synthetic.model_dump()
        name = "synthetic-{patients}p-{slices_per_patient}s-{size}px-seed{seed}".format(**params)
        source = {"uri": "synthetic", "params": params, "folder": str(root)}
        source_type = "synthetic"
    else:
        name = Path(config.data_path).name or str(config.data_path)
        source = {"uri": str(config.data_path)}
        if config.data_version:
            source["version"] = config.data_version
        source_type = "local"
    return {
        "name": name,
        "digest": fingerprint[:DIGEST_LENGTH],
        "source_type": source_type,
        "source": json.dumps(source, sort_keys=True),
        "profile": json.dumps(profile, sort_keys=True),
        "context": "training",
    }
