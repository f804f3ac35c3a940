"""`sweep train-one`: one training run in this process, without Ray.

    sweep train-one --arch cnn --scale tiny --recipe 2d_rht_sr --seed 2026 --synthetic --epochs 3

One progress line per epoch, the final metrics at the end (arguments: sweep/cli.py). The run
lives in --out (default results/train-one/<trial_key>): its checkpoint, updated every epoch, and
its artifacts. Running the same command again continues from that checkpoint (--fresh starts
over); a checkpoint written for other settings is refused, naming the fields that differ. Without
--data, --synthetic generates a small synthetic dataset (cached, so the second run reuses it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from trainables.callbacks import Callback

FINAL_KEYS = (
    "test_auprc", "val_auprc", "test_roc_auc", "test_dice", "test_iou", "test_recall",
    "test_precision", "test_soft_dice", "test_loss", "best_epoch", "epochs_run",
    "test_distinct_pred_values", "test_hist_spikiness",
)  # fmt: skip


def build_config(args: argparse.Namespace):
    from trainables.config import ConfigError, TrialConfig

    if args.data is None and args.synthetic is None:
        raise ConfigError(
            "sweep train-one: no dataset; give --data PATH (an LGG kaggle_3m folder) or "
            "--synthetic [PATIENTS] to train on generated data"
        )
    image_size = args.image_size or (64 if args.synthetic is not None else 256)
    fields = {
        "arch": args.arch,
        "scale": args.scale,
        "recipe": args.recipe,
        "seed": args.seed,
        "fold": args.fold,
        "image_size": image_size,
        "num_workers": args.num_workers,
    }
    if args.data is not None:
        fields["data_path"] = args.data
    else:
        fields["synthetic"] = {"patients": args.synthetic, "size": image_size}
    optional = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "compile": args.compile,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    if args.tracking_uri:
        fields["tracking"] = {"tracking_uri": args.tracking_uri, "experiment": args.experiment}
    return TrialConfig.from_fields(fields, source="sweep train-one")


class ProgressPrinter(Callback):
    """One line per epoch on stdout."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.start = time.perf_counter()

    def on_epoch_end(self, m: dict[str, float], checkpoint_dir: Path) -> None:
        print(
            f"epoch {int(m['epoch']):>3}/{self.epochs}  train_loss {m['train_loss']:.4f}  "
            f"val_loss {m['val_loss']:.4f}  val_auprc {m['val_auprc']:.4f}  "
            f"val_dice {m['val_dice']:.4f}  lr {m['lr']:.2e}  best {int(m['best_epoch'])}  "
            f"{m['epoch_time_s']:.1f}s",
            flush=True,
        )


def run(args: argparse.Namespace) -> int:
    from trainables.config import ConfigError

    try:
        config = build_config(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    import torch

    from trainables.checkpoint import STATE_FILE, CheckpointMismatch, load_checkpoint
    from trainables.tracked_run import run_tracked

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or Path("results") / "train-one" / config.trial_key)
    checkpoint_dir = out / "checkpoint"
    if args.fresh:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if (checkpoint_dir / STATE_FILE).is_file():
        try:
            epoch = load_checkpoint(checkpoint_dir, config)["epoch"]
        except CheckpointMismatch as err:
            print(f"sweep train-one: {err}\n(use --fresh or another --out)", file=sys.stderr)
            return 2
        print(f"{config.trial_key}: resuming after epoch {epoch} from {checkpoint_dir}")
    else:
        print(f"{config.trial_key}: config {config.config_hash[:12]}, output {out}")
    result = run_tracked(
        config,
        checkpoint_dir,
        callbacks=[ProgressPrinter(config.epochs)],
        device=args.device,
        artifacts_dir=out / "artifacts",
    )
    final = result.final_metrics
    print(f"\n{config.trial_key} finished: best epoch {result.best_epoch}")
    for key in FINAL_KEYS:
        if key in final:
            print(f"  {key:<27} {final[key]:.6g}")
    (out / "final_metrics.json").write_text(json.dumps(final, indent=1, sort_keys=True) + "\n")
    print(f"artifacts: {result.artifacts_dir}")
    return 0
