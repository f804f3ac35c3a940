"""The recipe registry: docs/nvfp4.md section 5 as data, validation, a ninth recipe, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import quant
from quant import recipes
from quant.recipes import (
    FWD,
    HP,
    PAPER_RECIPES,
    Q2,
    QH,
    SLOTS,
    Operand,
    Q,
    Recipe,
    get_recipe,
    list_recipes,
    register_recipe,
)
from sweep.cli import main as sweep_main

# docs/nvfp4.md section 5, GEMM by GEMM, in the table's own notation.
TABLE = {
    "baseline": (0, "HP X, HP W", "HP dY, HP W", "HP dY, HP X"),
    "nvfp4": (1, "Q(X), Q(W)", "Q(dY), Q(W)", "Q(dY), Q(X)"),
    "fwd_only": (2, "Q(X), Q(W)", "HP dY, HP W", "HP dY, HP X"),
    "chain_rule": (3, "Q(X), Q(W)", "HP dY, fwd Q(W)", "HP dY, fwd Q(X)"),
    "2d_rht": (4, "Q(X), Q2(W)", "Q(dY), Q2(W)", "Q(H dY), Q(H X)"),
    "2d_rht_sr": (5, "Q(X), Q2(W)", "Q(dY)+SR, Q2(W)", "Q(H dY)+SR, Q(H X)"),
    "sr_only": (6, "Q(X), Q(W)", "Q(dY)+SR, Q(W)", "Q(dY)+SR, Q(X)"),
    "fwd_rht": (7, "Q(H X), Q(H W)", "HP dY, HP W", "HP dY, HP X"),
}
# The built-ins beyond the paper (TE 2.20's 4over6), listed after the paper's eight.
BUILTINS = {
    **TABLE,
    "2d_rht_sr_4o6w": (
        None,
        "Q(X), Q2(W)+4/6",
        "Q(dY)+SR, Q2(W)+4/6",
        "Q(H dY)+SR, Q(H X)",
    ),
    "nvfp4_4o6": (None, "Q(X)+4/6, Q(W)+4/6", "Q(dY), Q(W)+4/6", "Q(dY), Q(X)+4/6"),
}


@pytest.fixture
def ninth(monkeypatch):
    """Registers a recipe for one test: the registry is put back as it was afterwards."""
    monkeypatch.setattr(recipes, "_REGISTRY", dict(recipes._REGISTRY))
    return register_recipe


def test_registry_lists_the_paper_recipes_in_paper_order():
    assert list_recipes() == list(BUILTINS)
    assert tuple(TABLE) == PAPER_RECIPES == tuple(list_recipes()[:8])
    assert [get_recipe(n).paper_id for n in PAPER_RECIPES] == list(range(8))
    assert all(get_recipe(n).paper_id is None for n in list_recipes()[8:])
    assert len({get_recipe(n).display_name for n in list_recipes()}) == len(BUILTINS)
    assert get_recipe("nvfp4").display_name == "NVFP4 Full"


@pytest.mark.parametrize("name", list(BUILTINS))
def test_each_recipe_is_the_table_row(name):
    recipe = get_recipe(name)
    paper_id, fprop, dgrad, wgrad = BUILTINS[name]
    assert recipe.paper_id == paper_id
    assert (recipe.gemm_summary("fprop"), recipe.gemm_summary("dgrad")) == (fprop, dgrad)
    assert recipe.gemm_summary("wgrad") == wgrad
    assert recipe.quantized == (name != "baseline")
    assert recipe.stochastic == (name in {"2d_rht_sr", "sr_only", "2d_rht_sr_4o6w"})


def test_get_recipe_errors_list_valid_names_and_pass_recipes_through():
    with pytest.raises(ValueError, match="unknown recipe 'nvfp8'.*baseline.*fwd_rht"):
        get_recipe("nvfp8")
    recipe = get_recipe("nvfp4")
    assert get_recipe(recipe) is recipe


@pytest.mark.parametrize("name", list(BUILTINS))
def test_recipes_round_trip_through_plain_data(name):
    recipe = get_recipe(name)
    data = json.loads(json.dumps(recipe.to_dict()))
    assert Recipe.from_dict(data) == recipe


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fprop_weight": Operand("quantize", stochastic=True)}, "gradients only"),
        ({"fprop_input": FWD}, "only the backward"),
        ({"dgrad_grad_output": FWD}, "only the backward"),
        ({"fprop_input": Q, "wgrad_input": FWD, "fprop_weight": Q}, None),
        ({"wgrad_input": FWD}, "needs fprop_input to be quantized"),
        ({"wgrad_grad_output": QH, "wgrad_input": Q}, "rotate both operands"),
    ],
)
def test_recipe_validation(kwargs, message):
    if message is None:
        Recipe("ok", None, "ok", **kwargs)
        return
    with pytest.raises(ValueError, match=message):
        Recipe("bad", None, "bad", **kwargs)


def test_operand_validation():
    with pytest.raises(ValueError, match="mode must be one of"):
        Operand("fp8")
    with pytest.raises(ValueError, match="block must be one of"):
        Operand("quantize", block=(1, 32))
    with pytest.raises(ValueError, match="needs 1x16 blocks"):
        Operand("quantize", block=(16, 16), rht=True)
    with pytest.raises(ValueError, match="takes no block"):
        Operand("hp", stochastic=True)
    assert Operand("quantize", block=[16, 16]) == Q2  # lists from JSON become tuples


def test_from_dict_rejects_unknown_fields():
    data = get_recipe("nvfp4").to_dict()
    with pytest.raises(ValueError, match="unknown recipe field.*'extra'"):
        Recipe.from_dict({**data, "extra": 1})
    data["fprop_input"] = {"mode": "quantize", "rounding": "nearest"}
    with pytest.raises(ValueError, match="unknown operand field.*'rounding'"):
        Recipe.from_dict(data)


def test_register_rejects_duplicates(ninth):
    with pytest.raises(ValueError, match="already registered"):
        register_recipe(get_recipe("nvfp4"))
    with pytest.raises(ValueError, match="paper id 1 already belongs to 'nvfp4'"):
        register_recipe(Recipe("other", 1, "Other"))


def test_a_ninth_recipe_from_data_trains(ninth, train_losses):
    """A new recipe is data only: 2D weights, SR on dY everywhere, chain-rule WGRAD input."""
    data = {
        "name": "sr_2d_chain",
        "paper_id": None,
        "display_name": "SR + 2D, chain-rule WGRAD",
        "fprop_input": {"mode": "quantize"},
        "fprop_weight": {"mode": "quantize", "block": [16, 16]},
        "dgrad_grad_output": {"mode": "quantize", "stochastic": True},
        "dgrad_weight": {"mode": "quantize", "block": [16, 16]},
        "wgrad_grad_output": {"mode": "hp"},
        "wgrad_input": {"mode": "fprop"},
    }
    recipe = ninth(Recipe.from_dict(data))
    assert list_recipes()[-1] == "sr_2d_chain"
    assert recipe.gemm_summary("wgrad") == "HP dY, fwd Q(X)"

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    quant.prepare(model, "sr_2d_chain", generator=torch.Generator().manual_seed(0))
    x, target = torch.randn(64, 32), torch.randn(64, 16)
    losses = train_losses(model, x, target, nn.functional.mse_loss, lr=1e-2, steps=30)
    assert losses[-1] < 0.8 * losses[0]


def test_every_slot_defaults_to_high_precision():
    recipe = Recipe("plain", None, "plain")
    assert all(recipe.operand(g, r) == HP for g, r in SLOTS)
    assert not recipe.quantized
    with pytest.raises(KeyError, match="no operand slot"):
        recipe.operand("fprop", "grad_output")


# --------------------------------------------------------------------------- sweep list recipes


def test_cli_lists_recipes_as_json(capsys):
    assert sweep_main(["list", "recipes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == list(BUILTINS)
    for row in rows:
        paper_id, fprop, dgrad, wgrad = BUILTINS[row["name"]]
        assert (row["paper_id"], row["fprop"], row["dgrad"], row["wgrad"]) == (
            paper_id,
            fprop,
            dgrad,
            wgrad,
        )
        assert row["display_name"] == get_recipe(row["name"]).display_name
        assert set(row["operands"]) == {f"{g}_{r}" for g, r in SLOTS}
        rebuilt = {
            k: v for k, v in row.items() if k in ("name", "paper_id", "display_name", "description")
        }
        assert Recipe.from_dict({**rebuilt, **row["operands"]}) == get_recipe(row["name"])


def test_cli_prints_a_table(capsys):
    assert sweep_main(["list", "recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["id", "name", "display"]
    assert len(lines) == 2 + len(BUILTINS)
    assert "Q(H dY)+SR, Q(H X)" in lines[2 + 5]
