"""The training loop: exact resume, the protocol's bookkeeping, checkpoints, artifacts.

The central claim (trainables.checkpoint): N epochs in one go and N/2 epochs, a stop, a restore and
N/2 more give bitwise the same weights, history and final metrics on CPU, for the baseline and for
a stochastic-rounding recipe. The stop is a real one: an exception at the start of epoch N/2 + 1
(a callback the config names, tests/support/hooks.py), then a fresh TrainingRun built from nothing
but the config and the checkpoint folder.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from tests.support import trials
from tests.support.hooks import InjectedFailure, fail_at_epoch
from trainables.checkpoint import (
    STATE_FILE,
    CheckpointMismatch,
    load_checkpoint,
    read_tracking_state,
)
from trainables.config import TrialConfig
from trainables.loop import (
    TIMING_KEYS,
    EarlyStopping,
    NonFiniteLossError,
    TrainingRun,
    train,
)

EPOCHS = 4


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data_cache"))


def tiny_config(cache_dir: str, **changes) -> TrialConfig:
    return trials.tiny_config(cache_dir, **{"epochs": EPOCHS, **changes})


def results_of(run_result):
    history = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in run_result.history]
    return history, run_result.final_metrics


def assert_same_floats(a, b):
    """Equal, with NaN equal to NaN (bitwise-equal runs produce NaN in the same places)."""
    assert a.keys() == b.keys()
    for key in a:
        same = a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key]))
        assert same, f"{key}: {a[key]!r} != {b[key]!r}"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["baseline", "2d_rht_sr"])
def test_stop_and_restore_is_bitwise_identical(recipe, cache_dir, tmp_path):
    config = tiny_config(cache_dir, recipe=recipe)
    straight = train(config, checkpoint_dir=tmp_path / "straight")

    interrupted = config.replace(callbacks=[fail_at_epoch(EPOCHS // 2 + 1)])
    assert interrupted.config_hash == config.config_hash
    with pytest.raises(InjectedFailure):
        train(interrupted, checkpoint_dir=tmp_path / "split")
    assert load_checkpoint(tmp_path / "split", config)["epoch"] == EPOCHS // 2
    resumed = train(interrupted, checkpoint_dir=tmp_path / "split", resume_from=tmp_path / "split")

    history_a, final_a = results_of(straight)
    history_b, final_b = results_of(resumed)
    assert [h["epoch"] for h in history_b] == list(range(1, EPOCHS + 1))
    for a, b in zip(history_a, history_b, strict=True):
        assert_same_floats(a, b)
    assert_same_floats(final_a, final_b)
    state_a = load_checkpoint(tmp_path / "straight", config)
    state_b = load_checkpoint(tmp_path / "split", config)
    for key, tensor in state_a["model"].items():
        assert torch.equal(tensor, state_b["model"][key]), key
    assert torch.equal(state_a["rng"]["sr"], state_b["rng"]["sr"])


@pytest.mark.slow
def test_same_initial_weights_for_every_recipe(cache_dir, tmp_path):
    def initial(recipe, seed=2026):
        run = TrainingRun(tiny_config(cache_dir, recipe=recipe, seed=seed), checkpoint_dir=tmp_path)
        return run.model.state_dict()

    base, quantized = initial("baseline"), initial("2d_rht_sr")
    assert base.keys() == quantized.keys()
    assert all(torch.equal(base[k], quantized[k]) for k in base)
    other_seed = initial("baseline", seed=2027)
    assert not all(torch.equal(base[k], other_seed[k]) for k in base)


def test_a_cpu_run_turns_deterministic_algorithms_on(cache_dir, tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        TrainingRun(tiny_config(cache_dir), checkpoint_dir=tmp_path)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


class FakeTracker:
    def __init__(self):
        self.epochs, self.final, self.artifacts = [], None, []

    def log_epoch(self, epoch, metrics):
        self.epochs.append(epoch)

    def log_final(self, metrics):
        self.final = metrics

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(path)

    def state(self):
        return {"run_id": "run-123"}


@pytest.mark.slow
def test_run_outputs_checkpoint_artifacts_and_final_metrics(cache_dir, tmp_path):
    config = tiny_config(cache_dir, epochs=2)
    tracker = FakeTracker()
    result = train(config, checkpoint_dir=tmp_path / "ckpt", tracker=tracker)

    assert tracker.epochs == [1, 2]
    expected = {"test_auprc", "val_auprc", "best_epoch", "test_roc_auc", "test_dice",
                "test_iou", "test_soft_dice", "test_distinct_pred_values", "test_hist_spikiness",
                "test_loss"}  # fmt: skip
    assert expected <= result.final_metrics.keys()
    assert tracker.final == result.final_metrics
    assert 1 <= result.best_epoch <= 2
    assert result.history[-1]["best_epoch"] == result.best_epoch

    names = {p.name for p in result.artifacts}
    assert {"config.json", "history.json", "pr_curve.json", "pred_hist.json", "pr_curve_val.json",
            "pred_hist_val.json", "pr_curve.png", "pred_hist.png"} <= names  # fmt: skip
    assert set(tracker.artifacts) == set(result.artifacts)
    pr = json.loads((result.artifacts_dir / "pr_curve.json").read_text())
    assert len(pr["precision"]) == len(pr["recall"]) <= 512
    hist = json.loads((result.artifacts_dir / "pred_hist.json").read_text())
    assert (
        len(hist["bin_edges"]) == 101 and sum(hist["counts"]) == result.final_metrics["test_pixels"]
    )
    saved = json.loads((result.artifacts_dir / "config.json").read_text())
    assert TrialConfig.from_fields(saved) == config

    state = load_checkpoint(tmp_path / "ckpt", config)
    assert state["finished"] and state["epoch"] == 2
    assert read_tracking_state(tmp_path / "ckpt") == {"run_id": "run-123"}
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert TrialConfig.from_fields(saved) == config

    # A finished checkpoint trains nothing more: it hands back the same final metrics.
    again = train(config, checkpoint_dir=tmp_path / "ckpt", resume_from=tmp_path / "ckpt")
    assert again.final_metrics == result.final_metrics and len(again.history) == 2


@pytest.mark.slow
def test_checkpoint_of_another_config_is_refused(cache_dir, tmp_path):
    config = tiny_config(cache_dir, epochs=1)
    train(config, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match=r"differing fields: lr: 0\.0005 -> 0\.001"):
        train(config.replace(lr=1e-3), checkpoint_dir=tmp_path, resume_from=tmp_path)


@pytest.mark.slow
def test_non_finite_loss_fails_loudly(cache_dir, tmp_path):
    run = TrainingRun(tiny_config(cache_dir), checkpoint_dir=tmp_path)
    run.model.register_forward_hook(lambda module, args, out: out * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"training loss nan at epoch 1, step 0"):
        run.fit()
    assert not (tmp_path / STATE_FILE).exists()  # no epoch was recorded as done


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from trainables import checkpoint

    config = tiny_config(str(tmp_path))
    checkpoint.save_checkpoint(tmp_path, {"epoch": 1, "tracking": None}, config)

    def crash(src, dst):
        raise OSError("killed mid-write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        checkpoint.save_checkpoint(tmp_path, {"epoch": 2, "tracking": None}, config)
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(tmp_path, config)["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_early_stopping_counts_patience_only_after_warmup():
    stopper = EarlyStopping(min_delta=0.001, patience=3, warmup=5)
    losses = [1.0, 0.9] + [0.9] * 20
    stops = [epoch for epoch, loss in enumerate(losses, 1) if stopper.step(epoch, loss)]
    assert stops[0] == 8  # epochs 6, 7, 8 without improvement after the warmup of 5


def test_early_stopping_needs_more_than_min_delta():
    stopper = EarlyStopping(min_delta=0.001, patience=2, warmup=0)
    assert not stopper.step(1, 1.0)
    assert not stopper.step(2, 0.9995)  # a drop of 0.0005 is not an improvement
    assert stopper.step(3, 0.9991)
    stopper = EarlyStopping(min_delta=0.001, patience=2, warmup=0)
    stopper.step(1, 1.0)
    stopper.step(2, 0.9995)
    assert not stopper.step(3, 0.998)  # 0.002 below the best: the counter restarts
    assert stopper.state_dict() == {"best": 0.998, "bad_epochs": 0}


def test_early_stopping_state_round_trip():
    a = EarlyStopping(0.001, 4, 2)
    for epoch, loss in enumerate([1.0, 0.8, 0.8, 0.8], 1):
        a.step(epoch, loss)
    b = EarlyStopping(0.001, 4, 2)
    b.load_state_dict(a.state_dict())
    assert [a.step(5, 0.8), a.step(6, 0.8)] == [b.step(5, 0.8), b.step(6, 0.8)] == [False, True]


@pytest.mark.slow
def test_train_one_command_runs_resumes_and_refuses_other_settings(
    cache_dir, tmp_path, monkeypatch, capsys
):
    from sweep.cli import main

    monkeypatch.setenv("SWEEP_DATA_CACHE", cache_dir)
    args = ["train-one", "--arch", "cnn", "--scale", "tiny", "--recipe", "nvfp4", "--seed", "1",
            "--synthetic", "10", "--image-size", "32", "--batch-size", "8", "--epochs", "1",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "epoch   1/1" in out and "test_auprc" in out
    assert json.loads((tmp_path / "final_metrics.json").read_text())["epochs_run"] == 1
    assert (tmp_path / "artifacts" / "pr_curve.png").is_file()

    assert main(args) == 0  # the same command again: nothing left to train
    assert "resuming after epoch 1" in capsys.readouterr().out

    assert main([*args, "--lr", "0.001"]) == 2
    assert "differing fields: lr" in capsys.readouterr().err
    assert main([*args, "--compile", "on"]) == 2  # compile is in the trial's identity too
    assert "differing fields: compile" in capsys.readouterr().err


def test_train_one_without_data_says_what_to_give(capsys):
    from sweep.cli import main

    assert main(["train-one", "--arch", "cnn", "--scale", "tiny", "--recipe", "nvfp4",
                 "--seed", "1"]) == 2  # fmt: skip
    assert "give --data PATH" in capsys.readouterr().err
