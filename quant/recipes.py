"""The eight NVFP4 QAT recipes of the paper, as data.

A quantized layer `Y = X W^T` runs three GEMMs (docs/nvfp4.md section 4). Each GEMM has two
operands, named here by the tensor they come from:

    GEMM    computes            contracts over   operands (role)
    fprop   Y  = X  @ W^T        K (in features)  input X,        weight W
    dgrad   dX = dY @ W          N (out features) grad_output dY, weight W
    wgrad   dW = dY^T @ X        M (tokens)       grad_output dY, input X

A recipe says, for each of these six (GEMM, role) slots, how the operand reaches the GEMM
(`Operand`):

- `mode="hp"`: unquantized (fp32 on CPU; the autocast dtype on a GPU). For backward slots this is
  the *original* high-precision tensor (the straight-through estimator of `fwd_only`).
- `mode="quantize"`: quantized by this GEMM, with 1x16 blocks along its contraction dimension
  (or 16x16 tiles, `block=(16, 16)`), optionally after the random Hadamard transform (`rht`),
  with round-to-nearest or stochastic rounding (`stochastic`). A backward slot re-quantizes the
  original tensor along its own contraction dimension.
- `mode="fprop"` (backward input/weight slots only): reuse the very tensor quantized in FPROP,
  blocks still along K. Only an emulator can do this (a GPU keeps no FP4 copy along K for the
  backward); the paper's `chain_rule` recipe needs it.

A quantized operand also carries TE 2.20's two options (quant.nvfp4_options, quant.nvfp4):

- `four_over_six="mae" | "mse"`: 4over6 block-scale selection, with `four_over_six_fast` (TE's
  fast error path) and `e4m3_max` (E of S_enc = 6E / amax: 256, TE's recipe default for 4over6
  tensors and ours when left out, or 448). Not with the RHT or SR (TE refuses both).
- `row_scaled=True`: one tensor scale per row of the operand's (rows, contraction) matrix, 1x16
  only; the GEMM's alpha becomes a vector. Linear layers only (an im2col row mixes pixels).

The table of docs/nvfp4.md section 5 is then eight rows of data (`_PAPER_ROWS`); the autograd
code in `quant.functional` never branches on a recipe's name, so a ninth recipe is one more
`register_recipe(Recipe(...))` call. Rules that keep a recipe meaningful are checked on
construction (`Recipe.__post_init__`): stochastic rounding only on gradients (docs/nvfp4.md s3), the
RHT only on 1x16 blocks, `fprop` reuse only for a slot whose tensor FPROP quantized (and not
row-scaled: its per-row scales would run along the backward GEMM's contraction dim).

Names are stable strings (they appear in trial keys and MLflow tags); `paper_id` (0-7) only
orders tables.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from quant.nvfp4_options import check_options

__all__ = [
    "FWD",
    "GEMMS",
    "HP",
    "PAPER_RECIPES",
    "Q",
    "Q2",
    "Q2_4O6",
    "QH",
    "QH_SR",
    "Q_4O6",
    "Q_SR",
    "SLOTS",
    "Mode",
    "Operand",
    "Recipe",
    "declare_recipe",
    "get_recipe",
    "list_recipes",
    "register_recipe",
]

Mode = Literal["hp", "quantize", "fprop"]
_MODES: tuple[str, ...] = ("hp", "quantize", "fprop")
_BLOCKS: tuple[tuple[int, int], ...] = ((1, 16), (16, 16))

#: (gemm, role) of every operand slot, in table order; `Recipe` has one field per slot,
#: named f"{gemm}_{role}".
SLOTS: tuple[tuple[str, str], ...] = (
    ("fprop", "input"),
    ("fprop", "weight"),
    ("dgrad", "grad_output"),
    ("dgrad", "weight"),
    ("wgrad", "grad_output"),
    ("wgrad", "input"),
)
GEMMS: tuple[str, ...] = ("fprop", "dgrad", "wgrad")


@dataclass(frozen=True)
class Operand:
    """How one operand of one GEMM is prepared (see the module docstring).

    `e4m3_max=None` means TE's defaults: 256 for a 4over6 operand, 448 otherwise; it is stored
    resolved, so equal settings compare (and hash) equal however they were written.
    """

    mode: Mode = "hp"
    block: tuple[int, int] = (1, 16)
    rht: bool = False
    stochastic: bool = False
    four_over_six: str | None = None
    four_over_six_fast: bool = False
    e4m3_max: int | None = None
    row_scaled: bool = False

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"Operand.mode must be one of {_MODES}, got {self.mode!r}")
        object.__setattr__(self, "block", tuple(self.block))
        if self.block not in _BLOCKS:
            raise ValueError(f"Operand.block must be one of {_BLOCKS}, got {self.block!r}")
        if self.e4m3_max is None:
            object.__setattr__(self, "e4m3_max", 448 if self.four_over_six is None else 256)
        settings = (self.block, self.rht, self.stochastic, self.four_over_six)
        extra = (self.four_over_six_fast, self.e4m3_max, self.row_scaled)
        if self.mode != "quantize" and (settings, extra) != (
            ((1, 16), False, False, None),
            (False, 448, False),
        ):
            raise ValueError(
                f"Operand(mode={self.mode!r}) takes no block/rht/stochastic/four_over_six/"
                "e4m3_max/row_scaled settings: they describe a quantization this operand does "
                "not perform"
            )
        if self.rht and self.block != (1, 16):
            raise ValueError("Operand.rht needs 1x16 blocks: the RHT rotates 16-element chunks")
        check_options(
            block=self.block,
            stochastic=self.stochastic,
            rht=self.rht,
            **self.quantizer_options(),
            amax_given=False,
            what="",
        )

    @property
    def quantized(self) -> bool:
        return self.mode != "hp"

    @property
    def tensor_scale(self) -> float:
        """6E: a / 6E is the tensor-level decode factor (2688 unless a 4over6 operand uses 256)."""
        return 6.0 * self.e4m3_max

    def quantizer_options(self) -> dict[str, Any]:
        """The quant.nvfp4 keyword options of TE 2.20 this operand quantizes with."""
        return {
            "four_over_six": self.four_over_six,
            "four_over_six_fast": self.four_over_six_fast,
            "e4m3_max": self.e4m3_max,
            "row_scaled": self.row_scaled,
        }

    def notation(self, symbol: str) -> str:
        """This operand in docs/nvfp4.md section 5 notation: HP X, Q(X), Q2(W), Q(H dY)+SR, fwd
        Q(X), plus Q2(W)+4/6 (4over6 MAE, exact, E 256) with its non-default settings in brackets,
        e.g. +4/6[mse,fast,E448], and +RS for a row-scaled operand."""
        if self.mode == "hp":
            return f"HP {symbol}"
        if self.mode == "fprop":
            return f"fwd Q({symbol})"
        name = "Q2" if self.block == (16, 16) else "Q"
        rotated = "H " if self.rht else ""
        text = f"{name}({rotated}{symbol})" + ("+SR" if self.stochastic else "")
        if self.four_over_six is not None:
            extra = [self.four_over_six] if self.four_over_six != "mae" else []
            extra += ["fast"] if self.four_over_six_fast else []
            extra += [f"E{self.e4m3_max}"] if self.e4m3_max != 256 else []
            text += "+4/6" + (f"[{','.join(extra)}]" if extra else "")
        return text + ("+RS" if self.row_scaled else "")


HP = Operand()
Q = Operand("quantize")
Q2 = Operand("quantize", block=(16, 16))
Q_SR = Operand("quantize", stochastic=True)
QH = Operand("quantize", rht=True)
QH_SR = Operand("quantize", rht=True, stochastic=True)
FWD = Operand("fprop")
Q_4O6 = Operand("quantize", four_over_six="mae")
Q2_4O6 = Operand("quantize", block=(16, 16), four_over_six="mae")


@dataclass(frozen=True)
class Recipe:
    """One QAT recipe: a name, its paper id and display name, and the six operand slots."""

    name: str
    paper_id: int | None
    display_name: str
    fprop_input: Operand = HP
    fprop_weight: Operand = HP
    dgrad_grad_output: Operand = HP
    dgrad_weight: Operand = HP
    wgrad_grad_output: Operand = HP
    wgrad_input: Operand = HP
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"Recipe.name must be a non-empty identifier, got {self.name!r}")
        for gemm, role in SLOTS:
            op = self.operand(gemm, role)
            if not isinstance(op, Operand):
                raise TypeError(f"recipe {self.name!r}: {gemm}_{role} must be an Operand")
            where = f"recipe {self.name!r}, {gemm}_{role}"
            if op.stochastic and role != "grad_output":
                raise ValueError(
                    f"{where}: stochastic rounding is for gradients only (docs/nvfp4.md s3)"
                )
            if op.mode == "fprop":
                if gemm == "fprop" or role == "grad_output":
                    raise ValueError(
                        f"{where}: mode 'fprop' reuses a forward tensor; only the "
                        "backward input/weight slots have one"
                    )
                forward = self.operand("fprop", role)
                if forward.mode != "quantize":
                    raise ValueError(f"{where}: mode 'fprop' needs fprop_{role} to be quantized")
                if forward.row_scaled:
                    raise ValueError(
                        f"{where}: mode 'fprop' cannot reuse a row-scaled fprop_{role}: its "
                        "per-row tensor scales would run along this GEMM's contraction dim"
                    )
        for gemm in GEMMS:
            a, b = (self.operand(g, r) for g, r in SLOTS if g == gemm)
            if a.rht != b.rht:
                raise ValueError(
                    f"recipe {self.name!r}, {gemm}: the RHT must rotate both operands or neither "
                    "(R cancels only when both are rotated along the contraction dim)"
                )

    def operand(self, gemm: str, role: str) -> Operand:
        """The operand settings of `role` in `gemm`, e.g. operand("dgrad", "weight")."""
        if (gemm, role) not in SLOTS:
            raise KeyError(f"no operand slot ({gemm!r}, {role!r}); slots: {SLOTS}")
        return getattr(self, f"{gemm}_{role}")

    @property
    def quantized(self) -> bool:
        """False when every GEMM runs in high precision (the layer is then the plain torch op)."""
        return any(self.operand(g, r).quantized for g, r in SLOTS)

    @property
    def stochastic(self) -> bool:
        """True when some operand uses stochastic rounding, so a torch.Generator is required."""
        return any(self.operand(g, r).stochastic for g, r in SLOTS)

    def gemm_summary(self, gemm: str) -> str:
        """One GEMM in the notation of docs/nvfp4.md's table, e.g. 'Q(dY)+SR, Q2(W)'."""
        symbols = {"input": "X", "weight": "W", "grad_output": "dY"}
        return ", ".join(
            self.operand(g, role).notation(symbols[role]) for g, role in SLOTS if g == gemm
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: the recipe round-trips through `Recipe.from_dict`."""
        data = asdict(self)
        for gemm, role in SLOTS:
            data[f"{gemm}_{role}"]["block"] = list(data[f"{gemm}_{role}"]["block"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Build a recipe from `to_dict()` output or hand-written data; unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown recipe field(s) {sorted(unknown)}; valid: {sorted(known)}")
        kwargs = dict(data)
        for gemm, role in SLOTS:
            key = f"{gemm}_{role}"
            if key in kwargs and not isinstance(kwargs[key], Operand):
                op = dict(kwargs[key])
                op_known = {f.name for f in fields(Operand)}
                if set(op) - op_known:
                    raise ValueError(
                        f"{key}: unknown operand field(s) {sorted(set(op) - op_known)}"
                        f"; valid: {sorted(op_known)}"
                    )
                try:
                    kwargs[key] = Operand(**op)
                except (TypeError, ValueError) as err:
                    name = data.get("name", "?")
                    raise ValueError(f"recipe {name!r}, {key}: {err}") from None
        return cls(**kwargs)


# --------------------------------------------------------------------------- the registry

_REGISTRY: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe, *, overwrite: bool = False) -> Recipe:
    """Add a recipe to the registry (a ninth recipe is data: no new code path)."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"register_recipe expects a Recipe, got {type(recipe).__name__}")
    if recipe.name in _REGISTRY and not overwrite:
        raise ValueError(f"recipe {recipe.name!r} is already registered")
    if recipe.paper_id is not None:
        for other in _REGISTRY.values():
            if other.paper_id == recipe.paper_id and other.name != recipe.name:
                raise ValueError(f"paper id {recipe.paper_id} already belongs to {other.name!r}")
    _REGISTRY[recipe.name] = recipe
    return recipe


def get_recipe(name: str | Recipe) -> Recipe:
    """The recipe registered under `name` (a Recipe passes through unchanged)."""
    if isinstance(name, Recipe):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(list_recipes())}") from None


def list_recipes() -> list[str]:
    """Registered recipe names, paper recipes first in paper-id order, then added ones."""

    def order(r: Recipe) -> tuple[int, int]:
        return (0, r.paper_id) if r.paper_id is not None else (1, 0)

    return [r.name for r in sorted(_REGISTRY.values(), key=order)]


# fmt: off
# docs/nvfp4.md section 5, row by row: name, paper id, display name, the six operand slots, and
# a description (on the row's second line). Slot columns: FPROP X, W | DGRAD dY, W | WGRAD dY, X.
_PAPER_ROWS = (
    ("baseline",   0, "BF16 baseline", HP,    HP,    HP,    HP,    HP,    HP,
     "no quantization: all three GEMMs in high precision"),
    ("nvfp4",      1, "NVFP4 Full",    Q,     Q,     Q,     Q,     Q,     Q,
     "every operand 1x16, round-to-nearest, re-quantized along each GEMM's contraction dim"),
    ("fwd_only",   2, "Forward only",  Q,     Q,     HP,    HP,    HP,    HP,
     "quantized forward; straight-through high-precision backward with the original X and W"),
    ("chain_rule", 3, "Chain rule",    Q,     Q,     HP,    FWD,   HP,    FWD,
     "quantized forward; backward GEMMs take HP dY and the forward's quantized X, W"),
    ("2d_rht",     4, "2D + RHT",      Q,     Q2,    Q,     Q2,    QH,    QH,
     "16x16 weight tiles (transpose-invariant), RHT on both WGRAD operands"),
    ("2d_rht_sr",  5, "2D + RHT + SR", Q,     Q2,    Q_SR,  Q2,    QH_SR, QH,
     "2d_rht with stochastic rounding on dY (TE's default NVFP4BlockScaling)"),
    ("sr_only",    6, "SR only",       Q,     Q,     Q_SR,  Q,     Q_SR,  Q,
     "nvfp4 with stochastic rounding on dY"),
    ("fwd_rht",    7, "Forward RHT",   QH,    QH,    HP,    HP,    HP,    HP,
     "forward operands rotated along K then quantized; high-precision backward"),
)
# Built-ins beyond the paper: TE 2.20's 4over6 (docs/nvfp4.md s7.1, quant.nvfp4). No paper id:
# they list after the paper's eight, and the paper's tables never include them.
_TE_4OVER6_ROWS = (
    ("2d_rht_sr_4o6w", None, "2D + RHT + SR + 4/6 W", Q, Q2_4O6, Q_SR, Q2_4O6, QH_SR, QH,
     "TE's default recipe (2d_rht_sr) with 4over6 on the weights' 16x16 tiles (MAE, E 256): "
     "NVFP4BlockScaling(nvfp4_4over6='weights'); DGRAD takes TE's own columnwise 4over6 copy "
     "of W"),
    ("nvfp4_4o6", None, "NVFP4 Full + 4/6 W, X", Q_4O6, Q_4O6, Q, Q_4O6, Q, Q_4O6,
     "nvfp4 (all 1x16, round-to-nearest, no RHT) with 4over6 (MAE, E 256) on weights and "
     "activations in every GEMM; gradients standard, as in TE (nvfp4_4over6='all', "
     "disable_rht=True)"),
)
# fmt: on
for _row in _PAPER_ROWS:
    register_recipe(Recipe(*_row))

# The study's eight recipes in paper-id order (the registry may grow; this tuple does not).
PAPER_RECIPES: tuple[str, ...] = tuple(list_recipes())

for _row in _TE_4OVER6_ROWS:
    register_recipe(Recipe(*_row))
del _row


# --------------------------------------------------------------------------- declared recipes

#: Keys of a recipe declared as data (a sweep spec's `recipes:` section): the six operand
#: slots, plus `base` (a registered recipe to start from), `display_name` and `description`.
_DECLARED_KEYS: tuple[str, ...] = (
    "base",
    "display_name",
    "description",
    *(f"{gemm}_{role}" for gemm, role in SLOTS),
)


def declare_recipe(name: str, data: dict[str, Any]) -> Recipe:
    """A recipe from declared data: every slot given, or a registered `base` plus overrides.

    An override is a mapping of Operand fields merged into the base's operand for that slot
    (`fprop_weight: {four_over_six: mse}` on base `2d_rht_sr` is Q2(W) with 4over6 MSE); a new
    `mode` starts the slot afresh. Slots neither given nor in a base are high precision. The
    name must not be a registered recipe's. Errors name the recipe, the slot and the rule.
    """
    if not isinstance(data, dict):
        raise ValueError(f"recipe {name!r}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_DECLARED_KEYS))
    if unknown:
        raise ValueError(
            f"recipe {name!r}: unknown key(s) {unknown}; valid: {', '.join(_DECLARED_KEYS)}"
        )
    if name in _REGISTRY:
        raise ValueError(
            f"recipe {name!r}: the name of a built-in recipe; declare it under another name "
            f"(with base: {name} to start from it)"
        )
    base = get_recipe(data["base"]) if data.get("base") is not None else None
    fields_ = {
        "name": name,
        "paper_id": None,
        "display_name": data.get("display_name") or name,
        "description": data.get("description")
        or (f"{base.name} with overrides" if base is not None else ""),
    }
    for gemm, role in SLOTS:
        key = f"{gemm}_{role}"
        start = base.operand(gemm, role) if base is not None else HP
        fields_[key] = _merged_operand(name, key, start, data.get(key))
    try:
        return Recipe(**fields_)
    except (TypeError, ValueError) as err:
        raise ValueError(str(err)) from None


def _merged_operand(recipe: str, key: str, start: Operand, override: Any) -> Operand:
    if override is None:
        return start
    if not isinstance(override, dict):
        raise ValueError(
            f"recipe {recipe!r}, {key}: expected a mapping of operand fields, got {override!r}"
        )
    known = {f.name for f in fields(Operand)}
    unknown = sorted(set(override) - known)
    if unknown:
        raise ValueError(
            f"recipe {recipe!r}, {key}: unknown operand field(s) {unknown}; "
            f"valid: {', '.join(sorted(known))}"
        )
    settings: dict[str, Any] = {}
    if override.get("mode", start.mode) == start.mode:
        settings = asdict(start)
        if settings["e4m3_max"] == (448 if start.four_over_six is None else 256):
            del settings["e4m3_max"]  # the base's default E: re-resolved for the merged slot
    settings.update(override)
    try:
        return Operand(**settings)
    except (TypeError, ValueError) as err:
        raise ValueError(f"recipe {recipe!r}, {key}: {err}") from None
