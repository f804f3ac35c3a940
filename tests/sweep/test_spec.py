"""Sweep specs: every shipped spec loads and plans; bad specs fail early and name the field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from sweep.cli import main
from sweep.plan import expand
from sweep.spec import SpecError, load_spec, parse_spec, spec_to_yaml

SPECS = sorted((Path(__file__).resolve().parents[2] / "sweep" / "specs").glob("*.yaml"))

MINIMAL = {
    "name": "t",
    "data": {"synthetic": {"patients": 6, "size": 32}, "image_size": 32},
    "grid": {"arch": ["cnn"], "scale": ["tiny"], "recipe": ["baseline"], "seed": [1]},
}


def _with(**changes) -> dict:
    raw = json.loads(json.dumps(MINIMAL))
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


def test_the_shipped_specs_are_the_promised_ones():
    assert {p.name for p in SPECS} == {
        "quickstart.yaml",
        "paper.yaml",
        "paper-cv.yaml",
        "paper-4over6.yaml",
        "tune-lr.yaml",
    }


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_shipped_spec_loads_and_plans(path):
    spec = load_spec(path)
    plan = expand(spec)
    assert len(plan.trials) == len({t.key for t in plan.trials}) > 0
    assert len({t.config.config_hash for t in plan.trials}) == len(plan.trials)


def test_paper_grid_is_960_trials_and_cv_is_20():
    by_name = {p.stem: expand(load_spec(p)) for p in SPECS}
    assert len(by_name["paper"].trials) == 4 * 3 * 8 * 10
    assert len(by_name["paper-cv"].trials) == 2 * 2 * 5
    counts = by_name["paper"].counts()
    assert set(counts["recipe"].values()) == {120} and len(counts["seed"]) == 10


def test_trial_keys_follow_the_identity_contract():
    plan = expand(parse_spec(MINIMAL))
    assert [t.key for t in plan.trials] == ["cnn-tiny-baseline-s1-holdout"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_with(colour="red"), "colour: unknown key"),
        (
            _with(grid__arch=["resnet"]),
            "grid.arch: unknown ['resnet']; valid choices: cnn, vit_adamw",
        ),
        (_with(grid__recipe=["fp8"]), "grid.recipe: unknown ['fp8']; valid choices: baseline"),
        (_with(grid__seed=[]), "grid.seed: grid.seed is empty"),
        (_with(grid__scale=["1b"]), "grid.scale: unknown ['1b']"),
        (_with(resources={"gpus_per_trial": 1.5}), "resources.gpus_per_trial: 1.5 GPUs"),
        (
            _with(resources={"cpus_per_trial": 0}),
            "resources.cpus_per_trial: Input should be greater than 0",
        ),
        (_with(grid__fold=["f1"]), "grid.fold must be [holdout] when data.split is holdout"),
        (_with(data={"image_size": 64}), "give exactly one of data.path"),
        (_with(data__synthetic__patients="many"), "data.synthetic.patients"),
        (_with(protocol={"epochz": 3}), "epochz: unknown key"),
        (_with(protocol={"lr": -1}), "lr: Input should be greater than 0"),
    ],
)
def test_bad_specs_name_the_field(raw, expected):
    with pytest.raises((SpecError, ValueError)) as err:
        expand(parse_spec(raw, source="bad.yaml"))
    assert expected in str(err.value)


def test_spec_and_trial_config_share_the_vocabulary():
    """The spec's choices and bounds are the trial config's (trainables.config)."""
    from trainables.vocabulary import ARCHS, MAX_FOLDS, folds, scales

    kfold = {"data__split": "kfold", "data__n_folds": MAX_FOLDS}
    spec = parse_spec(_with(grid__arch=list(ARCHS), grid__fold=list(folds()[1:]), **kfold))
    plan = expand(spec)
    assert {t.config.n_folds for t in plan.trials} == {MAX_FOLDS}
    assert {t.config.fold for t in plan.trials} == set(folds()[1:])
    with pytest.raises(SpecError, match="data.n_folds: Input should be less than or equal to 10"):
        parse_spec(_with(data__split="kfold", data__n_folds=MAX_FOLDS + 1))
    with pytest.raises(SpecError, match="valid choices: " + ", ".join(scales())):
        parse_spec(_with(grid__scale=["1b"]))


def test_save_weights_is_the_yaml_name_of_log_weights():
    spec = parse_spec(_with(save_weights=True))
    assert spec.log_weights
    assert yaml.safe_load(spec_to_yaml(spec))["save_weights"] is True
    assert parse_spec(yaml.safe_load(spec_to_yaml(spec))) == spec
    with pytest.raises(SpecError, match="log_weights: unknown key"):
        parse_spec(_with(log_weights=True))


def test_missing_spec_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_cli_plan_json_and_bad_spec_exit_code(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(_with(grid__seed=[1, 2], grid__recipe=["baseline", "nvfp4"])))
    assert main(["plan", str(spec), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["trials"]) == 4 and payload["counts"]["seed"] == {"1": 2, "2": 2}
    spec.write_text(yaml.safe_dump(_with(grid__arch=["resnet"])))
    assert main(["plan", str(spec)]) == 2
    assert "grid.arch" in capsys.readouterr().err


def test_run_refuses_a_missing_data_path_before_starting(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    raw = _with(
        data={"path": str(tmp_path / "missing"), "image_size": 32}, storage=str(tmp_path / "st")
    )
    spec.write_text(yaml.safe_dump(raw))
    assert main(["run", str(spec)]) == 2
    assert "data.path" in capsys.readouterr().err
    assert not (tmp_path / "st").exists()


# --------------------------------------------------------------------------- declared recipes

DECLARED = {
    "w4o6_mse": {
        "base": "2d_rht_sr",
        "fprop_weight": {"four_over_six": "mse"},
        "dgrad_weight": {"four_over_six": "mse"},
    },
    "x_rows": {
        "display_name": "Row-scaled X",
        "fprop_input": {"mode": "quantize", "row_scaled": True},
        "fprop_weight": {"mode": "quantize"},
    },
}


def test_paper_4over6_runs_the_papers_eight_plus_the_4over6_recipes():
    from quant.recipes import PAPER_RECIPES

    spec = load_spec(next(p for p in SPECS if p.name == "paper-4over6.yaml"))
    plan = expand(spec)
    recipes = list(plan.counts()["recipe"])
    assert recipes[:8] == list(PAPER_RECIPES)
    assert recipes[8:] == ["2d_rht_sr_4o6w", "nvfp4_4o6", "2d_rht_sr_4o6w_mse"]
    assert set(plan.counts()["recipe"].values()) == {4 * 3 * 10}
    declared = next(t.config for t in plan.trials if t.config.recipe == "2d_rht_sr_4o6w_mse")
    weight = declared.recipe_object().fprop_weight
    assert (weight.block, weight.four_over_six, weight.e4m3_max) == ((16, 16), "mse", 256)


def test_declared_recipes_plan_with_their_definitions():
    raw = _with(recipes=DECLARED, grid__arch=["swin"], grid__recipe=["2d_rht_sr", *DECLARED])
    plan = expand(parse_spec(raw))
    configs = {t.config.recipe: t.config for t in plan.trials}
    assert configs["w4o6_mse"].recipe_object().gemm_summary("dgrad") == "Q(dY)+SR, Q2(W)+4/6[mse]"
    assert configs["x_rows"].recipe_object().gemm_summary("fprop") == "Q(X)+RS, Q(W)"
    assert configs["x_rows"].recipe_definition["display_name"] == "Row-scaled X"
    assert len({c.config_hash for c in configs.values()}) == 3
    again = parse_spec(yaml.safe_load(spec_to_yaml(parse_spec(raw))))  # storage round trip
    assert [t.config for t in expand(again).trials] == [t.config for t in plan.trials]


@pytest.mark.parametrize(
    ("recipes", "expected"),
    [
        (
            {"r": {"base": "2d_rht_sr", "wgrad_input": {"four_over_six": "mae"}}},
            "recipes: recipe 'r', wgrad_input: four_over_six with rht=True is refused",
        ),
        (
            {"r": {"fprop_weight": {"mode": "quantize", "block": [16, 16], "row_scaled": True}}},
            "recipe 'r', fprop_weight: row_scaled=True needs block=(1, 16)",
        ),
        (
            {"r": {"dgrad_grad_output": {"mode": "quantize", "rounding": "sr"}}},
            "recipe 'r', dgrad_grad_output: unknown operand field(s) ['rounding']; valid: block",
        ),
        ({"r": {"bass": "nvfp4"}}, "recipe 'r': unknown key(s) ['bass']; valid: base"),
        ({"r": {"base": "nvfp8"}}, "unknown recipe 'nvfp8'; valid: baseline"),
        ({"nvfp4": {"base": "nvfp4"}}, "recipe 'nvfp4': the name of a built-in recipe"),
        (
            {"r": {"fprop_input": {"mode": "quantize", "e4m3_max": 256}}},
            "recipe 'r', fprop_input: e4m3_max=256 applies to 4over6 tensors only",
        ),
        (
            {"r": {"fprop_input": {"mode": "quantize", "stochastic": True}}},
            "recipe 'r', fprop_input: stochastic rounding is for gradients only",
        ),
    ],
)
def test_bad_recipes_name_the_recipe_the_operand_and_the_rule(recipes, expected):
    raw = _with(recipes=recipes, grid__recipe=["baseline"])
    with pytest.raises(SpecError) as err:
        parse_spec(raw, source="bad.yaml")
    assert expected in str(err.value)


def test_grid_recipes_must_be_built_in_or_declared():
    with pytest.raises(
        SpecError, match=r"grid.recipe: unknown \['mine'\]; valid choices: .*x_rows"
    ):
        parse_spec(_with(recipes=DECLARED, grid__recipe=["mine"]))


def test_protocol_backend_te_is_refused_at_plan_time_with_the_reason():
    raw = _with(grid__arch=["cnn"], grid__recipe=["2d_rht_sr"], protocol={"backend": "te"})
    with pytest.raises(ValueError, match="cnn quantizes convolutions and Transformer Engine"):
        expand(parse_spec(raw))
    raw = _with(grid__arch=["swin"], grid__recipe=["fwd_only"], protocol={"backend": "te"})
    with pytest.raises(ValueError, match="'fwd_only' cannot run on Transformer Engine"):
        expand(parse_spec(raw))
    raw = _with(
        grid__arch=["swin", "vit_adamw"],
        grid__recipe=["baseline", "2d_rht_sr", "2d_rht_sr_4o6w", "w4o6_mse"],
        recipes=DECLARED,
        protocol={"backend": "te"},
    )
    assert {t.config.backend for t in expand(parse_spec(raw)).trials} == {"te"}


def test_cli_lists_declared_recipes(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(_with(recipes=DECLARED)))
    assert main(["list", "recipes", "--spec", str(spec), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["x_rows"]["source"] == "spec" and rows["nvfp4"]["source"] == "built-in"
    assert rows["w4o6_mse"]["fprop"] == "Q(X), Q2(W)+4/6[mse]"
    assert rows["w4o6_mse"]["operands"]["fprop_weight"]["four_over_six"] == "mse"
    spec.write_text(yaml.safe_dump(_with(recipes={"r": {"base": "nope"}})))
    assert main(["list", "recipes", "--spec", str(spec)]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_recipe_declared_in_yaml_trains_a_tiny_model_for_two_epochs(tmp_path):
    """The declared recipe exists only in the spec: the trial config alone rebuilds it."""
    from trainables.loop import train

    text = """
name: declared
data: {synthetic: {patients: 6, size: 32, slices_per_patient: 4}, image_size: 32}
recipes:
  w4o6_rows:
    base: nvfp4_4o6
    fprop_input: {four_over_six: null, row_scaled: true}
    wgrad_input: {four_over_six: mse, e4m3_max: 448}
grid: {arch: [swin], scale: [tiny], recipe: [w4o6_rows], seed: [1]}
protocol: {epochs: 2, batch_size: 8}
"""
    spec = tmp_path / "declared.yaml"
    spec.write_text(text)
    (trial,) = expand(load_spec(spec)).trials
    config = trial.config.replace(cache_dir=str(tmp_path / "cache"))
    assert config.recipe_object().gemm_summary("fprop") == "Q(X)+RS, Q(W)+4/6"
    result = train(config, checkpoint_dir=tmp_path / "run")
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) for h in result.history)


def test_protocol_compile_switch_from_yaml(tmp_path):
    """`compile: on` in YAML is a boolean; it reaches every trial's config (and its hash)."""
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(MINIMAL) + "protocol:\n  compile: on\n")
    (trial,) = expand(load_spec(spec)).trials
    assert trial.config.compile == "on"
    assert trial.config.config_hash != expand(parse_spec(MINIMAL)).trials[0].config.config_hash
    with pytest.raises(ValueError, match="compile: Input should be 'off', 'on' or 'auto'"):
        expand(parse_spec(_with(protocol={"compile": "fast"})))
