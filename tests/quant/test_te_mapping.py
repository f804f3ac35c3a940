"""quant.te: recipe -> NVFP4BlockScaling fields everywhere; the TE swap only where TE imports.

TE itself does not install here (no CUDA headers), so the mapping table and the refusals are
tested as pure units; bench/te_parity.py compares the emulator with TE on a Blackwell GPU.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from quant import te
from quant.recipes import Q2_4O6, Q_4O6, QH, Q, Recipe, declare_recipe, get_recipe

# TE's own field names (transformer_engine/common/recipe/__init__.py, TE 2.20), every one given:
# TE's dataclass defaults read NVTE_* environment variables at import.
TE_DEFAULTS = {
    "disable_rht": False,
    "disable_stochastic_rounding": False,
    "disable_2d_quantization": False,
    "row_scaled_activation": False,
    "nvfp4_4over6": "none",
    "nvfp4_4over6_e4m3_use_256": "all",
    "nvfp4_4over6_err_mode": "MAE",
}
OFF = {"disable_rht": True, "disable_stochastic_rounding": True, "disable_2d_quantization": True}
EXPECTED = {
    "nvfp4": {**TE_DEFAULTS, **OFF},
    "sr_only": {**TE_DEFAULTS, **OFF, "disable_stochastic_rounding": False},
    "2d_rht": {**TE_DEFAULTS, "disable_stochastic_rounding": True},
    "2d_rht_sr": TE_DEFAULTS,  # TE's default NVFP4BlockScaling()
    "2d_rht_sr_4o6w": {**TE_DEFAULTS, "nvfp4_4over6": "weights"},
    "nvfp4_4o6": {**TE_DEFAULTS, **OFF, "nvfp4_4over6": "all"},
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_expressible_recipes_map_to_te_fields(name):
    assert te.te_recipe_kwargs(name) == EXPECTED[name]
    assert te.te_environment(name) == {
        "NVTE_NVFP4_4OVER6_ERR_USE_FAST_MATH": "0",
        "NVTE_USE_FAST_MATH": "0",
    }


def _declared(**slots) -> Recipe:
    return declare_recipe("d", slots)


@pytest.mark.parametrize(
    ("slots", "fields", "fast"),
    [
        (  # 4over6 on the weights, MSE, E = 448, TE's fast error path
            {
                "base": "2d_rht_sr",
                "fprop_weight": {
                    "four_over_six": "mse",
                    "e4m3_max": 448,
                    "four_over_six_fast": True,
                },
                "dgrad_weight": {
                    "four_over_six": "mse",
                    "e4m3_max": 448,
                    "four_over_six_fast": True,
                },
            },
            {
                "nvfp4_4over6": "weights",
                "nvfp4_4over6_e4m3_use_256": "none",
                "nvfp4_4over6_err_mode": "MSE",
            },
            True,
        ),
        (  # 4over6 everywhere, 256 for weights only
            {
                "base": "nvfp4_4o6",
                "fprop_input": {"e4m3_max": 448},
                "wgrad_input": {"e4m3_max": 448},
            },
            {**OFF, "nvfp4_4over6": "all", "nvfp4_4over6_e4m3_use_256": "weights"},
            False,
        ),
        (  # row-scaled forward input (both of its copies), RHT off
            {
                "base": "2d_rht",
                "fprop_input": {"row_scaled": True},
                "wgrad_grad_output": {"rht": False},
                "wgrad_input": {"rht": False, "row_scaled": True},
            },
            {
                "disable_rht": True,
                "disable_stochastic_rounding": True,
                "row_scaled_activation": True,
            },
            False,
        ),
    ],
)
def test_te_220_options_map_to_their_fields(slots, fields, fast):
    recipe = _declared(**slots)
    assert te.te_recipe_kwargs(recipe) == {**TE_DEFAULTS, **fields}
    assert te.te_environment(recipe)["NVTE_NVFP4_4OVER6_ERR_USE_FAST_MATH"] == (
        "1" if fast else "0"
    )


def test_the_operand_table_is_what_te_does_to_each_slot():
    table = te.te_operand_table(False, False, False, nvfp4_4over6="weights")
    assert table[("fprop", "weight")] == table[("dgrad", "weight")] == Q2_4O6
    assert table[("fprop", "input")] == Q and table[("wgrad", "input")] == QH
    table = te.te_operand_table(True, True, True, nvfp4_4over6="activations")
    assert table[("fprop", "input")] == table[("wgrad", "input")] == Q_4O6
    assert table[("dgrad", "grad_output")] == Q  # gradients never
    with pytest.raises(te.TERefused, match="with the RHT"):
        te.te_operand_table(False, True, True, nvfp4_4over6="activations")
    with pytest.raises(te.TERefused, match="row-scaled 4over6"):
        te.te_operand_table(True, True, True, row_scaled_activation=True, nvfp4_4over6="all")


def test_baseline_needs_no_te_recipe():
    assert te.te_recipe_kwargs("baseline") is None
    assert te.te_recipe("baseline") is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("fwd_only", "DGRAD operand is HP dY"),
        ("chain_rule", "DGRAD operand is HP dY"),
        ("fwd_rht", "FPROP operand is Q\\(H X\\)"),
    ],
)
def test_recipes_te_cannot_express_say_so(name, why):
    with pytest.raises(
        NotImplementedError, match=f"{name}.*cannot run on Transformer Engine.*{why}"
    ):
        te.te_recipe_kwargs(name)


def test_mapping_reads_the_data_not_the_name():
    """An added recipe equal to a TE configuration maps; a mixed one is refused."""
    same_as_2d_rht = replace(get_recipe("2d_rht"), name="te_like", paper_id=None)
    assert te.te_recipe_kwargs(same_as_2d_rht) == EXPECTED["2d_rht"]
    rht_without_2d = replace(
        get_recipe("nvfp4"), name="rht_1d", paper_id=None, wgrad_grad_output=QH, wgrad_input=QH
    )
    assert te.te_recipe_kwargs(rht_without_2d) == {
        **TE_DEFAULTS,
        "disable_stochastic_rounding": True,
        "disable_2d_quantization": True,
    }
    mixed = replace(get_recipe("2d_rht"), name="mixed", paper_id=None, dgrad_weight=Q)
    with pytest.raises(NotImplementedError, match="mixed.*fields switch"):
        te.te_recipe_kwargs(mixed)


@pytest.mark.parametrize(
    ("slots", "why"),
    [
        (
            {"base": "2d_rht_sr", "fprop_weight": {"four_over_six": "mae"}},
            "FPROP and DGRAD copies of W differ.*HybridQuantizer",
        ),
        (
            {"base": "nvfp4", "dgrad_grad_output": {"four_over_six": "mae"}},
            "DGRAD operand is Q\\(dY\\)\\+4/6; TE never applies 4over6 or row scaling to gradients",
        ),
        (
            {
                "base": "nvfp4_4o6",
                "fprop_weight": {"four_over_six": "mse"},
                "dgrad_weight": {"four_over_six": "mse"},
            },
            "one nvfp4_4over6_err_mode for every 4over6 tensor",
        ),
        (
            {
                "base": "nvfp4_4o6",
                "fprop_weight": {"four_over_six_fast": True},
                "dgrad_weight": {"four_over_six_fast": True},
            },
            "fast error path is one process-wide switch",
        ),
        (
            {
                "base": "nvfp4",
                "fprop_weight": {"row_scaled": True},
                "dgrad_weight": {"row_scaled": True},
            },
            "FPROP operand is Q\\(W\\)\\+RS, TE only does",
        ),
        (
            {"base": "2d_rht", "fprop_input": {"row_scaled": True}},
            "FPROP and WGRAD copies of X differ",
        ),
    ],
)
def test_te_220_recipes_te_cannot_express_say_why(slots, why):
    with pytest.raises(NotImplementedError, match=f"cannot run on Transformer Engine: .*{why}"):
        te.te_recipe_kwargs(_declared(**slots))


def test_check_te_trial_refuses_convolutions_and_inexpressible_recipes():
    te.check_te_trial("baseline", {"conv"}, what="cnn")  # nothing quantized: nothing to refuse
    te.check_te_trial("2d_rht_sr_4o6w", {"linear"}, what="swin")
    with pytest.raises(ValueError, match="backend 'te': cnn quantizes convolutions"):
        te.check_te_trial("nvfp4", {"conv", "linear"}, what="cnn")
    with pytest.raises(ValueError, match="backend 'te': recipe 'fwd_rht' cannot run"):
        te.check_te_trial("fwd_rht", {"linear"}, what="vit")


def test_te_prepare_refuses_convolutions_before_importing_te():
    model = nn.Sequential(nn.Conv2d(16, 16, 3), nn.Flatten(), nn.Linear(16, 16))
    with pytest.raises(NotImplementedError, match="layer '0' \\(Conv2d\\).*no NVFP4 convolution"):
        te.te_prepare(model, "2d_rht_sr")
    with pytest.raises(NotImplementedError, match="fwd_only"):
        te.te_prepare(nn.Linear(16, 16), "fwd_only")


def test_a_missing_te_says_how_to_get_it():
    try:
        import transformer_engine.pytorch  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install '\.\[te\]'"):
            te.te_prepare(nn.Linear(16, 16), "nvfp4")
    else:
        pytest.skip("transformer_engine is installed here")


@pytest.mark.gpu
def test_te_linear_swap_shares_parameters_and_runs():
    pytest.importorskip("transformer_engine.pytorch")
    if not _te_runs():
        pytest.skip("transformer_engine is installed but cannot run here")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).cuda()
    params = list(model.parameters())
    te.te_prepare(model, "2d_rht_sr")
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert type(model[0]).__module__.startswith("transformer_engine")
    x = torch.randn(128, 64, device="cuda")
    with te.te_autocast("2d_rht_sr"):
        y = model(x)
    y.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_parity_script_skips_clearly_without_te_or_blackwell(capsys):
    from bench import te_parity

    if te_parity._skip_reason() is None:
        pytest.skip("a Blackwell GPU with transformer_engine is here: run bench/te_parity.py")
    assert te_parity.main([]) == te_parity.SKIPPED == 77
    assert "te_parity: skipped: " in capsys.readouterr().out


def test_te_model_refuses_convolutions_before_importing_te():
    model = nn.Sequential(nn.Conv2d(16, 16, 3), nn.Flatten(), nn.Linear(16, 16))
    with pytest.raises(NotImplementedError, match="no NVFP4 convolution"):
        te.te_model(model, "nvfp4_4o6")


def _te_runs() -> bool:
    """True when transformer_engine.pytorch imports and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # TE raises assorted errors when its CUDA libraries are missing
        return False
    return True
