"""quant.te: recipe -> NVFP4BlockScaling flags everywhere; the TE swap only where TE imports."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from quant import te
from quant.recipes import QH, Q, Recipe, get_recipe

# TE's own names (transformer_engine/common/recipe/__init__.py, TE >= 2.14).
EXPECTED = {
    "nvfp4": {
        "disable_rht": True,
        "disable_stochastic_rounding": True,
        "disable_2d_quantization": True,
    },
    "sr_only": {
        "disable_rht": True,
        "disable_stochastic_rounding": False,
        "disable_2d_quantization": True,
    },
    "2d_rht": {
        "disable_rht": False,
        "disable_stochastic_rounding": True,
        "disable_2d_quantization": False,
    },
    "2d_rht_sr": {  # TE's default NVFP4BlockScaling()
        "disable_rht": False,
        "disable_stochastic_rounding": False,
        "disable_2d_quantization": False,
    },
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_expressible_recipes_map_to_te_flags(name):
    assert te.te_recipe_kwargs(name) == EXPECTED[name]


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
    rht_without_2d = Recipe(
        "rht_1d",
        None,
        "RHT, 1x16 weights",
        fprop_input=Q,
        fprop_weight=Q,
        dgrad_grad_output=Q,
        dgrad_weight=Q,
        wgrad_grad_output=QH,
        wgrad_input=QH,
    )
    assert te.te_recipe_kwargs(rht_without_2d) == {
        "disable_rht": False,
        "disable_stochastic_rounding": True,
        "disable_2d_quantization": True,
    }
    mixed = replace(get_recipe("2d_rht"), name="mixed", paper_id=None, dgrad_weight=Q)
    with pytest.raises(NotImplementedError, match="mixed.*flags switch"):
        te.te_recipe_kwargs(mixed)


def test_te_prepare_refuses_convolutions_before_importing_te():
    model = nn.Sequential(nn.Conv2d(16, 16, 3), nn.Flatten(), nn.Linear(16, 16))
    with pytest.raises(NotImplementedError, match="layer '0' \\(Conv2d\\).*no NVFP4 convolution"):
        te.te_prepare(model, "2d_rht_sr")
    with pytest.raises(NotImplementedError, match="fwd_only"):
        te.te_prepare(nn.Linear(16, 16), "fwd_only")


def test_te_available_is_false_without_cuda_or_te():
    if not torch.cuda.is_available():
        assert te.te_available() is False


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
    if not te.te_available():
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
