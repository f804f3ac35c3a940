"""quant.prepare: the contract over every recipe x every layer kind, sharing, skipping, SR state."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import quant
from quant.modules import QConv2d, QConvTranspose2d, QLinear, converted_layers
from quant.recipes import list_recipes


class ConvNet(nn.Module):
    """A 3-channel stem kept in full precision (declared), then quantizable conv layers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 32, 4, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)
        self.head = nn.Conv2d(16, 1, 1)

    def full_precision_layers(self) -> set[str]:
        return {"stem", "head"}

    def forward(self, x):
        return self.head(torch.relu(self.up(torch.relu(self.down(torch.relu(self.stem(x)))))))


def make(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """A small model exercising one layer kind, and an input for it."""
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)), torch.randn(
            2, 24, 32
        )
    if kind == "conv2d":
        model = nn.Sequential(nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 16, 3, 1, 1))
        return model, torch.randn(2, 16, 8, 8)
    model = nn.Sequential(
        nn.ConvTranspose2d(16, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, 16, 2, 2)
    )
    return model, torch.randn(2, 16, 4, 4)


KINDS = ["linear", "conv2d", "conv_transpose2d"]


def generator():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("recipe", list_recipes())
def test_contract_every_recipe_every_layer_kind(recipe, kind, dtype):
    model, x = make(kind)
    model = model.to(dtype)
    reference = copy.deepcopy(model)
    params = list(model.parameters())
    keys = list(model.state_dict())

    quant.prepare(model, recipe, generator=generator())

    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert list(model.state_dict()) == keys
    assert len(converted_layers(model)) == 2
    y = model(x.to(dtype))
    assert y.shape == reference(x.to(dtype)).shape and y.dtype == dtype
    y.float().square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == dtype, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("recipe", list_recipes())
def test_a_tiny_model_trains_under_every_recipe(recipe, train_losses):
    torch.manual_seed(0)
    model = ConvNet()
    quant.prepare(model, recipe, generator=generator())
    x = torch.randn(4, 3, 16, 16)
    target = (x.mean(1, keepdim=True) > 0).float()
    bce = nn.functional.binary_cross_entropy_with_logits
    losses = train_losses(model, x, target, bce, lr=3e-3, steps=15)
    assert losses[-1] < 0.85 * losses[0], losses


def test_declared_and_skipped_layers_stay_full_precision():
    model = ConvNet()
    quant.prepare(model, "nvfp4")
    assert type(model.stem) is nn.Conv2d and type(model.head) is nn.Conv2d
    assert type(model.down) is QConv2d and type(model.up) is QConvTranspose2d
    assert quant.is_quantized(model.down) and not quant.is_quantized(model.stem)

    by_name = quant.prepare(ConvNet(), "nvfp4", skip=["up"])
    assert not quant.is_quantized(by_name.up) and quant.is_quantized(by_name.down)
    by_rule = quant.prepare(ConvNet(), "nvfp4", skip=lambda name, m: name == "down")
    assert not quant.is_quantized(by_rule.down) and quant.is_quantized(by_rule.up)
    with pytest.raises(ValueError, match=r"\['uup'\] are not modules of ConvNet"):
        quant.prepare(ConvNet(), "nvfp4", skip=["uup"])


def test_a_torchao_filter_fn_passed_as_skip_is_refused():
    """torchao's filter_fn(module, fqn) returns True to quantize; skip(name, module) to skip."""

    def filter_fn(module, fqn):
        return isinstance(module, nn.Conv2d)

    for wrong in (filter_fn, lambda mod, name: False):
        with pytest.raises(TypeError, match=r"not filter_fn\(module, name\)"):
            quant.prepare(ConvNet(), "nvfp4", skip=wrong)
    adapted = quant.prepare(ConvNet(), "nvfp4", skip=lambda name, m: not filter_fn(m, name))
    assert quant.is_quantized(adapted.down) and not quant.is_quantized(adapted.up)


def test_unquantizable_layers_raise_naming_the_layer():
    model = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"layer '1' \(Linear\): out_features = 10"):
        quant.prepare(model, "nvfp4")
    quant.prepare(model, "nvfp4", skip=["1"])
    with pytest.raises(ValueError, match="groups=2"):
        quant.prepare(nn.Conv2d(32, 32, 3, groups=2), "nvfp4")


def test_prepare_is_idempotent_and_switches_recipes():
    model, x = make("linear")
    quant.prepare(model, "nvfp4")
    first = model(x)
    layers = converted_layers(model)
    quant.prepare(model, "nvfp4")
    assert converted_layers(model) == layers and torch.equal(model(x), first)
    quant.prepare(model, "baseline")
    assert all(m.recipe.name == "baseline" for m in layers.values())
    reference = quant.unprepare(copy.deepcopy(model))
    assert type(reference[0]) is nn.Linear
    assert torch.equal(model(x), reference(x))  # baseline: the plain ops, bit for bit


def test_optimizer_built_before_prepare_keeps_working():
    model, x = make("linear")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model[0].weight.detach().clone()
    quant.prepare(model, "2d_rht")
    model(x).sum().backward()
    optimizer.step()
    assert not torch.equal(model[0].weight, before)


def test_only_exact_layer_classes_are_converted():
    model = nn.Sequential(nn.MultiheadAttention(32, 2), nn.Linear(32, 32))
    quant.prepare(model, "nvfp4")
    # out_proj is used through F.multi_head_attention_forward, never through its forward()
    assert not quant.is_quantized(model[0].out_proj) and isinstance(model[1], QLinear)


def test_sr_recipes_need_a_generator():
    with pytest.raises(ValueError, match="stochastic rounding: pass generator"):
        quant.prepare(make("linear")[0], "2d_rht_sr")
    with pytest.raises(TypeError, match="torch.Generator"):
        quant.prepare(make("linear")[0], "2d_rht_sr", generator=0)
    quant.prepare(make("linear")[0], "2d_rht")  # no SR, no generator needed


def test_generator_state_restores_the_same_random_stream():
    """A resumed run (weights + generator state) continues exactly like the uninterrupted one."""

    def train(model, optimizer, x, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()

    model, x = make("conv2d")
    gen = torch.Generator().manual_seed(2026)
    quant.prepare(model, "2d_rht_sr", generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(model, optimizer, x, 2)
    checkpoint = (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(optimizer.state_dict()),
        gen.get_state(),
    )
    train(model, optimizer, x, 2)
    uninterrupted = copy.deepcopy(model.state_dict())

    resumed, _ = make("conv2d")
    resumed.load_state_dict(checkpoint[0])
    new_gen = torch.Generator()
    new_gen.set_state(checkpoint[2])
    quant.prepare(resumed, "2d_rht_sr", generator=new_gen)
    resumed_opt = torch.optim.Adam(resumed.parameters(), lr=1e-3)
    resumed_opt.load_state_dict(checkpoint[1])
    train(resumed, resumed_opt, x, 2)
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, uninterrupted[key]), key

    fresh, _ = make("conv2d")  # a generator that does not continue the stream differs
    fresh.load_state_dict(checkpoint[0])
    quant.prepare(fresh, "2d_rht_sr", generator=torch.Generator().manual_seed(1))
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    fresh_opt.load_state_dict(checkpoint[1])
    train(fresh, fresh_opt, x, 2)
    assert not torch.equal(fresh[0].weight, uninterrupted["0.weight"])
