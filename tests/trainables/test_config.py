"""TrialConfig: validated on construction, errors name the field, a hash that covers exactly the
result-affecting settings (litgpt-style config tests)."""

import hashlib
import json

import pytest

from trainables.config import (
    NOT_HASHED,
    TUNE_KEY,
    ConfigError,
    TrialConfig,
    config_diff,
)
from trainables.vocabulary import ARCH_DEFAULTS, sample_suffix

BASE = {"arch": "cnn", "scale": "tiny", "recipe": "baseline", "seed": 2026, "synthetic": {}}


def make(**changes) -> TrialConfig:
    return TrialConfig.from_fields({**BASE, **changes})


def test_defaults_are_the_paper_protocol():
    c = make()
    assert (c.epochs, c.batch_size, c.grad_clip) == (100, 32, 1.0)
    assert (c.plateau_factor, c.plateau_patience) == (0.5, 10)
    assert (c.early_stop_min_delta, c.early_stop_patience, c.early_stop_warmup) == (0.001, 20, 40)
    assert (c.bce_weight, c.tversky_weight, c.tversky_alpha, c.tversky_beta) == (1, 1, 0.3, 0.7)
    assert (c.split_seed, c.fold, c.image_size, c.logit_clamp) == (2026, "holdout", 256, 20.0)


@pytest.mark.parametrize(
    "arch, optimizer, lr, wd",
    [
        ("cnn", "adamax", 5e-4, 0.0),
        ("vit_adamw", "adamw", 1e-4, 1e-4),
        ("vit_adamax", "adamax", 5e-4, 0.0),
        ("swin", "adamw", 1e-4, 1e-4),
    ],
)
def test_optimizer_defaults_per_arch(arch, optimizer, lr, wd):
    c = make(arch=arch)
    assert (c.optimizer, c.lr, c.weight_decay) == (optimizer, lr, wd)
    assert c.model_arch == ARCH_DEFAULTS[arch][3]


def test_optimizer_settings_can_be_overridden():
    c = make(arch="swin", lr=3e-4, weight_decay=0.05, optimizer="adamax")
    assert (c.optimizer, c.lr, c.weight_decay) == ("adamax", 3e-4, 0.05)


def test_trial_key():
    assert make(arch="vit_adamw", recipe="2d_rht_sr", seed=7).trial_key == (
        "vit_adamw-tiny-2d_rht_sr-s7-holdout"
    )
    assert make(fold="f3").trial_key.endswith("-s2026-f3")


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"arch": "resnet"}, "arch"),
        ({"scale": "huge"}, "scale"),
        ({"recipe": "fp8"}, "recipe"),
        ({"seed": -1}, "seed"),
        ({"lr": 0}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": "many"}, "batch_size"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"plateau_factor": 1.5}, "plateau_factor"),
        ({"precision": "fp8"}, "precision"),
        ({"synthetic": {"patients": 1}}, "synthetic.patients"),
        ({"model_overrides": {"x": object()}}, "model_overrides"),
        ({"learning_rate": 1e-3}, "learning_rate"),
    ],
)
def test_errors_name_the_field(changes, field):
    with pytest.raises(ConfigError) as err:
        make(**changes)
    assert f"  {field}:" in str(err.value)


def test_the_constructor_raises_config_error_too():
    with pytest.raises(ConfigError, match="  epochs:"):
        TrialConfig(**{**BASE, "epochs": 0})


def test_unknown_choices_list_the_valid_ones():
    with pytest.raises(ConfigError, match="valid choices: .*2d_rht_sr"):
        make(recipe="fp8")
    with pytest.raises(ConfigError, match="valid choices: tiny, 500k, 4m, 15m"):
        make(scale="1b")
    with pytest.raises(ConfigError, match="unknown key; valid keys: arch"):
        make(learning_rate=1e-3)


def test_fold_must_exist():
    with pytest.raises(ConfigError, match="fold 'f5' is not one of holdout, f0, f1, f2, f3, f4"):
        make(fold="f5")
    assert make(fold="f2", n_folds=3).fold_index == 2


def test_exactly_one_data_source():
    with pytest.raises(ConfigError, match="exactly one of data_path"):
        make(synthetic=None)
    with pytest.raises(ConfigError, match="exactly one of data_path"):
        make(data_path="/data/kaggle_3m")


def test_relative_data_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = make(synthetic=None, data_path="kaggle_3m")
    assert c.data_path == str(tmp_path / "kaggle_3m")


def test_frozen():
    c = make()
    with pytest.raises(Exception, match="frozen"):
        c.lr = 1.0


def test_json_round_trip(tmp_path):
    c = make(arch="swin", fold="f1", model_overrides={"shift_when_window_covers_grid": False})
    assert TrialConfig.from_fields(json.loads(c.to_json())) == c
    assert TrialConfig.from_fields(json.loads(c.save(tmp_path / "config.json").read_text())) == c
    assert TrialConfig.from_fields(json.loads(c.to_json())).config_hash == c.config_hash


# The canonical JSON of BASE with code_version pinned. If this test fails, what the hash covers
# changed: every finished trial of every sweep will count as changed (and be refused or re-run).
GOLDEN_FIELDS = {
    "arch": "cnn", "scale": "tiny", "recipe": "baseline", "seed": 2026, "fold": "holdout",
    "split_seed": 2026, "n_folds": 5, "data_path": None, "data_version": None,
    "synthetic": {"patients": 12, "size": 64, "seed": 0, "slices_per_patient": 16},
    "image_size": 256, "augment": True, "epochs": 100, "batch_size": 32, "optimizer": "adamax",
    "lr": 0.0005, "weight_decay": 0.0, "grad_clip": 1.0, "plateau_factor": 0.5,
    "plateau_patience": 10, "early_stop_min_delta": 0.001, "early_stop_patience": 20,
    "early_stop_warmup": 40, "bce_weight": 1.0, "tversky_weight": 1.0, "tversky_alpha": 0.3,
    "tversky_beta": 0.7, "tversky_smooth": 1e-05, "logit_clamp": 20.0, "precision": "auto",
    "compile": "auto", "model_overrides": {}, "code_version": "0.1.0", "backend": "emulated",
    "recipe_definition": {
        "name": "baseline", "paper_id": 0,
        **{
            slot: {
                "mode": "hp", "block": [1, 16], "rht": False, "stochastic": False,
                "four_over_six": None, "four_over_six_fast": False, "e4m3_max": 448,
                "row_scaled": False,
            }
            for slot in (
                "fprop_input", "fprop_weight", "dgrad_grad_output", "dgrad_weight",
                "wgrad_grad_output", "wgrad_input",
            )
        },
    },
}  # fmt: skip
GOLDEN_HASH = "8054079eae6cad21a8e3fbe76a40d681b1bdb77e8f779469f2307ad2ef4bb0aa"


def test_hash_is_sha256_of_the_canonical_json():
    c = make(code_version="0.1.0")
    assert c.result_fields() == GOLDEN_FIELDS
    canonical = json.dumps(GOLDEN_FIELDS, sort_keys=True, separators=(",", ":"))
    assert c.config_hash == hashlib.sha256(canonical.encode()).hexdigest() == GOLDEN_HASH


def test_hash_ignores_key_order():
    reordered = dict(reversed(list({**BASE, "lr": 1e-3, "epochs": 3}.items())))
    assert TrialConfig.from_fields(reordered).config_hash == make(lr=1e-3, epochs=3).config_hash


# One changed value per result-affecting field; the coverage assertion below makes a new field
# fail this test until someone decides whether it changes results.
CHANGED = {
    "arch": "swin",
    "scale": "500k",
    "recipe": "nvfp4",
    "seed": 2027,
    "fold": "f0",
    "split_seed": 7,
    "n_folds": 4,
    "data_path": None,  # see test_hash_covers_the_data_source
    "data_version": "v2",
    "synthetic": {"patients": 13},
    "image_size": 128,
    "augment": False,
    "epochs": 50,
    "batch_size": 16,
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 0.01,
    "grad_clip": 2.0,
    "plateau_factor": 0.1,
    "plateau_patience": 5,
    "early_stop_min_delta": 0.01,
    "early_stop_patience": 10,
    "early_stop_warmup": 0,
    "bce_weight": 0.5,
    "tversky_weight": 2.0,
    "tversky_alpha": 0.5,
    "tversky_beta": 0.5,
    "tversky_smooth": 1.0,
    "logit_clamp": 10.0,
    "precision": "bf16",
    "compile": "on",
    "model_overrides": {"drop_path": 0.0},
    "code_version": "9.9.9",
    "backend": "te",
    "recipe_definition": None,  # see test_hash_covers_the_recipe_definition
}


def test_every_field_is_classified():
    assert set(CHANGED) | NOT_HASHED == set(TrialConfig.model_fields)


@pytest.mark.parametrize("field", sorted(set(CHANGED) - {"data_path", "recipe_definition"}))
def test_hash_changes_with_each_result_affecting_field(field):
    base = make()
    changed = make(**{field: CHANGED[field]})
    assert getattr(changed, field) != getattr(base, field)
    assert changed.config_hash != base.config_hash


def test_hash_covers_the_data_source(tmp_path):
    a = make(synthetic=None, data_path=str(tmp_path / "a"))
    b = make(synthetic=None, data_path=str(tmp_path / "b"))
    assert len({a.config_hash, b.config_hash, make().config_hash}) == 3
    assert make(synthetic=None, data_path=str(tmp_path / "a"), data_version="x").config_hash != (
        a.config_hash
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"num_workers": 4},
        {"cache_dir": "/tmp/cache"},
        {"tracking": {"tracking_uri": "sqlite:///x.db", "experiment": "e"}},
        {"callbacks": ["tests.support.hooks:FailAtEpoch"]},
        {"sample_suffix": "0123abcd"},
    ],
)
def test_hash_ignores_settings_that_cannot_change_results(changes):
    assert make(**changes).config_hash == make().config_hash


def test_config_diff_ignores_fields_outside_the_hash():
    config = make()
    moved = config.replace(num_workers=4, cache_dir="/elsewhere", epochs=config.epochs + 1)
    assert list(config_diff(config.to_dict(), moved.to_dict())) == ["epochs"]


def test_result_fields_are_json():
    fields = make().result_fields()
    assert not NOT_HASHED & set(fields)
    json.dumps(fields)


# --------------------------------------------------------------------------- across Ray Tune


def test_a_config_crosses_ray_tune_whole():
    tracking = {"tracking_uri": "sqlite:///x.db", "experiment": "sw", "parent_run_id": "p1"}
    config = make(tracking={**tracking, "log_weights": True})
    got = TrialConfig.from_tune({TUNE_KEY: config.to_tune()})
    assert got == config and got.config_hash == config.config_hash
    assert (got.tracking.tracking_uri, got.tracking.experiment, got.tracking.parent_run_id) == (
        "sqlite:///x.db",
        "sw",
        "p1",
    )
    assert got.run_key == got.trial_key


def test_sampled_values_merge_on_top_and_name_the_sample():
    config = make()
    sampled = {"lr": 3e-4, "weight_decay": 0.01}
    suffix = sample_suffix(sampled)
    got = TrialConfig.from_tune(
        {TUNE_KEY: {**config.to_tune(), **sampled, "sample_suffix": suffix}}
    )
    assert (got.lr, got.weight_decay) == (3e-4, 0.01)
    assert got.trial_key == config.trial_key and got.config_hash != config.config_hash
    assert got.run_key == f"{config.trial_key}-{suffix}" and len(suffix) == 8


def test_a_tune_config_that_disagrees_with_its_hash_is_refused():
    config = make()
    with pytest.raises(ConfigError, match="config_hash"):
        TrialConfig.from_tune({TUNE_KEY: {**config.to_tune(), "config_hash": "0" * 64}})
    with pytest.raises(ConfigError, match="arch"):
        TrialConfig.from_tune({TUNE_KEY: {**config.to_tune(), "arch": "x"}})
    with pytest.raises(ConfigError, match="no 'trial' mapping"):
        TrialConfig.from_tune(config.to_dict())


def test_replace_validates():
    c = make()
    assert c.replace(epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="epochs"):
        c.replace(epochs=-3)


# --------------------------------------------------------------------------- recipe, backend

MINE = {
    "name": "mine",
    "paper_id": None,
    "display_name": "Mine",
    "description": "",
    "fprop_input": {"mode": "quantize"},
    "fprop_weight": {"mode": "quantize", "block": [16, 16], "four_over_six": "mae"},
}


REUSES_ROW_SCALED = {
    **MINE,
    "fprop_input": {"mode": "quantize", "row_scaled": True},
    "wgrad_input": {"mode": "fprop"},
}


def test_a_declared_recipe_travels_in_the_config_and_its_hash():
    mine = make(arch="swin", recipe="mine", recipe_definition=MINE)
    assert mine.recipe_object().fprop_weight.e4m3_max == 256  # TE's default, resolved
    assert TrialConfig.from_fields(json.loads(mine.to_json())) == mine
    mse = {**MINE, "fprop_weight": {**MINE["fprop_weight"], "four_over_six": "mse"}}
    assert make(arch="swin", recipe="mine", recipe_definition=mse).config_hash != mine.config_hash
    renamed = {**MINE, "display_name": "Other words", "description": "for a figure"}
    same = make(arch="swin", recipe="mine", recipe_definition=renamed)
    assert same.config_hash == mine.config_hash


def test_hash_covers_the_recipe_definition():
    from tests.quant.test_recipes import BUILTINS

    hashes = {make(arch="swin", recipe=name).config_hash for name in BUILTINS}
    assert len(hashes) == len(BUILTINS)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"recipe": "mine"}, "  recipe: unknown recipe 'mine'; valid choices: baseline"),
        ({"recipe": "other", "recipe_definition": MINE}, "recipe_definition is of recipe 'mine'"),
        (
            {"recipe": "nvfp4", "recipe_definition": {**MINE, "name": "nvfp4"}},
            "differs from the built-in recipe 'nvfp4'",
        ),
        (
            {"recipe": "mine", "recipe_definition": REUSES_ROW_SCALED},
            "  recipe_definition: recipe 'mine', wgrad_input: mode 'fprop' cannot reuse a "
            "row-scaled",
        ),
        ({"backend": "tpu"}, "  backend: Input should be 'emulated' or 'te'"),
    ],
)
def test_recipe_and_backend_errors_name_the_field(changes, message):
    with pytest.raises(ConfigError) as err:
        make(arch="swin", **changes)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "cnn", "recipe": "nvfp4"}, "cnn quantizes convolutions and Transformer Engine"),
        ({"recipe": "fwd_only"}, "'fwd_only' cannot run on Transformer Engine: its DGRAD"),
        ({"recipe": "chain_rule"}, "'chain_rule' cannot run on Transformer Engine"),
        ({"recipe": "fwd_rht"}, "its FPROP operand is Q(H X)"),
        ({"recipe": "nvfp4", "compile": "on"}, "backend 'te' runs Transformer Engine's own"),
        (
            {"recipe": "mine", "recipe_definition": MINE},
            "'mine' cannot run on Transformer Engine: its DGRAD operand is HP dY",
        ),
    ],
)
def test_backend_te_refuses_at_plan_time_what_te_cannot_run(changes, message):
    with pytest.raises(ConfigError) as err:
        make(**{"arch": "vit_adamw", "backend": "te", **changes})
    assert message in str(err.value)


@pytest.mark.parametrize(
    "recipe", ["baseline", "nvfp4", "2d_rht_sr", "2d_rht_sr_4o6w", "nvfp4_4o6"]
)
def test_backend_te_accepts_what_te_runs_exactly(recipe):
    for arch in ("vit_adamw", "swin"):
        assert make(arch=arch, recipe=recipe, backend="te").backend == "te"


def test_row_scaled_recipes_are_refused_for_the_cnn():
    rows = {**MINE, "fprop_weight": {"mode": "quantize"}}
    rows["fprop_input"] = {"mode": "quantize", "row_scaled": True}
    assert make(arch="swin", recipe="mine", recipe_definition=rows).recipe == "mine"
    with pytest.raises(ConfigError, match="row-scaled operands, defined for Linear layers only"):
        make(arch="cnn", recipe="mine", recipe_definition=rows)


def test_mlflow_params_carry_the_full_recipe_definition(tmp_path):
    """Into the session's MLflow store (tests/conftest.py), as a sweep's trial logs them."""
    import os

    from mlflow import MlflowClient

    from trainables.tracked_run import build_tracker

    uri = os.environ["MLFLOW_TRACKING_URI"]
    tracking = {"experiment": "declared-recipe-params"}
    config = make(arch="swin", recipe="mine", recipe_definition=MINE, tracking=tracking)
    tracker = build_tracker(config, tmp_path / "trial")
    assert tracker.finish().ok
    params = MlflowClient(uri).get_run(tracker.run_id).data.params
    assert params["recipe"] == "mine" and params["backend"] == "emulated"
    assert params["recipe_definition.fprop_weight.four_over_six"] == "mae"
    assert params["recipe_definition.fprop_weight.e4m3_max"] == "256"
    assert params["recipe_definition.dgrad_weight.mode"] == "hp"


def test_compile_switch_reads_yaml_booleans_and_names_the_choices():
    assert make(compile=True).compile == "on" and make(compile=False).compile == "off"
    with pytest.raises(ConfigError, match=r"compile: Input should be 'off', 'on' or 'auto'"):
        make(compile="yes")
