"""Sweep specs: every shipped spec loads and plans; bad specs fail early and name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sweep.cli import main
from sweep.plan import expand
from sweep.spec import SpecError, load_spec, parse_spec

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


def test_protocol_compile_switch_from_yaml(tmp_path):
    """`compile: on` in YAML is a boolean; it reaches every trial's config (and its hash)."""
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(MINIMAL) + "protocol:\n  compile: on\n")
    (trial,) = expand(load_spec(spec)).trials
    assert trial.config.compile == "on"
    assert trial.config.config_hash != expand(parse_spec(MINIMAL)).trials[0].config.config_hash
    with pytest.raises(ValueError, match="compile: Input should be 'off', 'on' or 'auto'"):
        expand(parse_spec(_with(protocol={"compile": "fast"})))
