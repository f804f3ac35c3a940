"""The trial config: every setting of one training run, frozen, validated, hashed.

One `TrialConfig` is one Ray Tune trial and one MLflow child run. It is built once (by the sweep
planner, the `train-one` command or a test), validated on construction, saved as JSON beside every
checkpoint, and never mutated. Two numbers identify it:

- `trial_key` = "{arch}-{scale}-{recipe}-s{seed}-{fold}", the human name of the grid point (the
  ledger's key; `run_key`, the Ray trial directory and MLflow run name and tag, adds an Optuna
  sample's `sample_suffix`).
- `config_hash` = sha256 of the canonical JSON (sorted keys, no whitespace) of every field that
  can change a result. Two configs with the same hash must train to the same weights on the same
  device; anything else is a different experiment and the sweep ledger must not mix them.

Result-affecting (hashed): the grid point (arch, scale, recipe, seed, fold) with the recipe's full
definition (`recipe_definition`, `quant.recipes.Recipe.to_dict()`: a recipe declared in a sweep
spec exists nowhere else, and a built-in's settings are pinned with the run), the data (split seed,
number of folds, the dataset path and version string, or the synthetic dataset's parameters; the
image size; augmentation on/off), the whole protocol (epochs, batch size, optimizer, lr, weight
decay, gradient clipping, plateau scheduler, early stopping, loss weights and Tversky parameters,
logit clamp, precision, backend, compile: a compiled step quantizes bit for bit as eager code,
but its fp32 sums may run in another order), the model overrides, and the code version (package
version + git sha: trainables.code_version).

`backend` is "emulated" (quant.prepare: every layer kind, every recipe, any device) or "te"
(Transformer Engine on a Blackwell GPU: ViT/Swin Linear layers through transformer_engine.pytorch,
quant.te). A trial TE cannot run exactly (a convolution it would quantize, a recipe its
NVFP4BlockScaling cannot express) is refused here, when the sweep is planned, with the reason.

Not result-affecting (excluded from the hash, listed in `NOT_HASHED`; also the recipe's display
name and description inside `recipe_definition`): `num_workers` (augmentation
is seeded per (seed, epoch, sample), so the number of loader processes cannot change a sample),
`cache_dir` (where decoded data is kept), `tracking` (where and what is logged, system metrics
included: a sampler thread reads psutil/NVML counters and never touches the model, the data or
any random stream), `callbacks` (observers of the loop named by import path, see
`CallbackRef`; they must not change a result) and `sample_suffix` (which Optuna sample of the
grid point this is: its sampled values are fields of their own, hashed).

The config is the only contract between the sweep and a trial: Ray Tune carries `to_tune()` (the
fields and the planned hash, an Optuna sample's values and suffix merged on top), and the worker
rebuilds it with `from_tune`, refusing a hash its own code computes differently. The arch, scale
and fold choices are the study's vocabulary (trainables.vocabulary).

Protocol defaults are the paper's (docs/study.md, "Training"); optimizer, lr and weight decay
default per arch from `ARCH_DEFAULTS` and can be overridden. Errors name the field:

    >>> TrialConfig(arch="cnn", scale="tiny", recipe="baseline", seed=0, lr=-1, synthetic={})
    ConfigError: invalid trial config
      lr: Input should be greater than 0
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from trainables.code_version import code_version
from trainables.vocabulary import (
    ARCH_DEFAULTS,
    ARCHS,
    MAX_FOLDS,
    N_FOLDS,
    check_choice,
    folds,
    scales,
    trial_key,
)

#: Fields that cannot change a result, hence left out of `config_hash` (see module docstring).
NOT_HASHED = frozenset({"num_workers", "cache_dir", "tracking", "callbacks", "sample_suffix"})
# A recipe's words, not settings: left out of the hash too.
_RECIPE_WORDS = ("display_name", "description")


class ConfigError(ValueError):
    """An invalid trial config; the message names every offending field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SyntheticData(_Frozen):
    """Parameters of a generated dataset (trainables.synth.write_synthetic), in place of a path."""

    patients: int = Field(12, ge=3)
    size: int = Field(64, ge=16)
    seed: int = 0
    slices_per_patient: int = Field(16, ge=2)


class TrackingConfig(_Frozen):
    """Where the run is logged (MLflow). Not result-affecting."""

    tracking_uri: str | None = None
    experiment: str = "train-one"
    parent_run_id: str | None = None
    log_weights: bool = False  # upload the best weights as an artifact
    # MLflow's system metrics (CPU, memory; GPU with the `gpu` extra): "auto" = on CUDA only
    system_metrics: bool | Literal["auto"] = "auto"
    system_metrics_interval_s: float = Field(10.0, gt=0)
    # How long a trial's end waits for an unreachable MLflow; what is still undelivered then is
    # copied to `outbox` (the sweep's storage: trainables.outbox), or stays in the checkpoint.
    finish_timeout_s: float = Field(60.0, ge=0)
    outbox: str | None = None
    outbox_endpoint: str | None = None  # s3 endpoint of the outbox (MinIO), if any


class CallbackRef(_Frozen):
    """A loop callback by import path, "package.module:factory" or {path, args}: the trial builds
    `factory(**args)` (a trainables.callbacks.Callback) and adds it to the loop's own."""

    path: str
    args: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"path": data} if isinstance(data, str) else data

    @field_validator("path")
    @classmethod
    def _import_path(cls, path: str) -> str:
        module, _, name = path.partition(":")
        if not all(part.isidentifier() for part in (*module.split("."), *name.split("."))):
            raise ValueError(f"expected an import path 'package.module:factory', got {path!r}")
        return path


class TrialConfig(_Frozen):
    """Every setting of one training run (see the module docstring for what is hashed)."""

    # -- the grid point
    arch: str  # one of ARCHS
    scale: str
    # the full definition first, so that `recipe` is checked against it (filled from the
    # registry for a built-in recipe; a declared recipe's comes from the sweep spec)
    recipe_definition: dict[str, Any] | None = None
    recipe: str
    seed: int = Field(ge=0)
    fold: str = "holdout"

    # -- the data
    split_seed: int = 2026
    n_folds: int = Field(N_FOLDS, ge=2, le=MAX_FOLDS)
    data_path: str | None = None
    data_version: str | None = None  # e.g. a fingerprint of the files; None = the path alone
    synthetic: SyntheticData | None = None
    image_size: int = Field(256, ge=16)
    augment: bool = True

    # -- the protocol (docs/study.md "Training"); optimizer/lr/weight_decay default per arch
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adamw", "adamax"]
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    grad_clip: float = Field(1.0, gt=0)
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    plateau_patience: int = Field(10, ge=0)
    early_stop_min_delta: float = Field(0.001, ge=0)
    early_stop_patience: int = Field(20, ge=1)
    early_stop_warmup: int = Field(40, ge=0)
    bce_weight: float = Field(1.0, ge=0)
    tversky_weight: float = Field(1.0, ge=0)
    tversky_alpha: float = Field(0.3, ge=0)  # weight of false positives
    tversky_beta: float = Field(0.7, ge=0)  # weight of false negatives
    tversky_smooth: float = Field(1e-5, gt=0)
    logit_clamp: float = Field(20.0, gt=0)  # BCE sees logits clamped to [-c, c]
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    backend: Literal["emulated", "te"] = "emulated"
    compile: Literal["off", "on", "auto"] = "auto"  # torch.compile the step; auto: off for now
    model_overrides: dict[str, Any] = {}
    code_version: str = Field(default_factory=lambda: code_version())

    # -- not result-affecting (NOT_HASHED)
    num_workers: int = Field(0, ge=0)
    cache_dir: str | None = None
    tracking: TrackingConfig | None = None
    callbacks: list[CallbackRef] = []
    # An Optuna sample of the grid point: 8 hex digits of the values it sampled (see `run_key`)
    sample_suffix: str | None = Field(None, pattern=r"^[0-9a-f]{8}$")

    # ------------------------------------------------------------------ validation

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as err:
            raise ConfigError(_describe(err, "trial config")) from None

    @model_validator(mode="before")
    @classmethod
    def _arch_defaults(cls, data: Any) -> Any:
        """Fill optimizer, lr and weight decay from the arch's row of the paper's table."""
        if not isinstance(data, dict) or data.get("arch") not in ARCH_DEFAULTS:
            return data  # the field validator reports the bad arch
        optimizer, lr, weight_decay, _ = ARCH_DEFAULTS[data["arch"]]
        data = dict(data)
        for key, value in (("optimizer", optimizer), ("lr", lr), ("weight_decay", weight_decay)):
            if data.get(key) is None:
                data[key] = value
        return data

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `on`/`off` as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        return check_choice(arch, ARCHS, "arch")

    @field_validator("scale")
    @classmethod
    def _known_scale(cls, scale: str, info) -> str:
        arch = info.data.get("arch")
        return scale if arch is None else check_choice(scale, scales(arch), "scale")

    @model_validator(mode="before")
    @classmethod
    def _builtin_recipe_definition(cls, data: Any) -> Any:
        """A registered recipe's definition is filled in when none is given."""
        import quant

        if isinstance(data, dict) and data.get("recipe_definition") is None:
            name = data.get("recipe")
            if isinstance(name, str) and name in quant.list_recipes():
                return {**data, "recipe_definition": quant.get_recipe(name).to_dict()}
        return data

    @field_validator("recipe_definition")
    @classmethod
    def _valid_definition(cls, definition: dict[str, Any] | None) -> dict[str, Any] | None:
        from quant.recipes import Recipe

        if definition is None:
            return None
        try:
            return Recipe.from_dict(definition).to_dict()
        except (TypeError, ValueError) as err:
            raise ValueError(str(err)) from None

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, recipe: str, info) -> str:
        import quant

        if "recipe_definition" not in info.data:
            return recipe  # the definition itself is invalid (reported there)
        definition = info.data["recipe_definition"]
        builtins = quant.list_recipes()
        if definition is None:
            raise ValueError(
                f"unknown recipe {recipe!r}; valid choices: {', '.join(builtins)} "
                "(or a recipe declared in the sweep spec, with its recipe_definition)"
            )
        if definition["name"] != recipe:
            raise ValueError(f"recipe_definition is of recipe {definition['name']!r}")
        if recipe in builtins and definition != quant.get_recipe(recipe).to_dict():
            raise ValueError(
                f"recipe_definition differs from the built-in recipe {recipe!r}; declare a "
                "recipe with its own name instead"
            )
        return recipe

    @field_validator("data_path")
    @classmethod
    def _absolute_path(cls, path: str | None) -> str | None:
        # Ray workers run in their own directory: a relative path would point elsewhere there.
        return None if path is None else os.path.abspath(os.path.expanduser(path))

    @field_validator("model_overrides")
    @classmethod
    def _json_overrides(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(overrides, sort_keys=True)
        except TypeError as err:
            raise ValueError(f"must be JSON-serializable (it is hashed): {err}") from None
        return overrides

    @model_validator(mode="after")
    def _consistent(self) -> TrialConfig:
        if (self.data_path is None) == (self.synthetic is None):
            raise ValueError("give exactly one of data_path (a kaggle_3m folder) or synthetic")
        valid_folds = folds(self.n_folds)
        if self.fold not in valid_folds:
            raise ValueError(f"fold {self.fold!r} is not one of {', '.join(valid_folds)}")
        self._check_backend()
        return self

    def _check_backend(self) -> None:
        """Refuse, at plan time, what a backend cannot run (the reason is TE's or the layer's)."""
        from models.registry import quantized_layer_kinds
        from quant.recipes import SLOTS
        from quant.te import check_te_trial

        recipe = self.recipe_object()
        if not recipe.quantized:
            return
        kinds = quantized_layer_kinds(self.model_arch)
        if self.backend == "te":
            if self.compile == "on":
                raise ValueError(
                    "compile: on compiles the emulated quantizer; backend 'te' runs Transformer "
                    "Engine's own kernels (use compile: auto or off)"
                )
            check_te_trial(recipe, kinds, what=self.arch)
        elif "conv" in kinds and any(recipe.operand(*slot).row_scaled for slot in SLOTS):
            raise ValueError(
                f"recipe {recipe.name!r} has row-scaled operands, defined for Linear layers "
                f"only, but {self.arch} quantizes convolutions (an im2col row mixes pixels)"
            )

    def recipe_object(self):
        """The trial's quant.recipes.Recipe, rebuilt from `recipe_definition`."""
        from quant.recipes import Recipe

        return Recipe.from_dict(self.recipe_definition)

    # ------------------------------------------------------------------ identity

    @property
    def model_arch(self) -> str:
        """The models registry arch ("vit" for both ViT optimizer variants)."""
        return ARCH_DEFAULTS[self.arch][3]

    @property
    def split(self) -> str:
        return "holdout" if self.fold == "holdout" else "kfold"

    @property
    def fold_index(self) -> int | None:
        return None if self.fold == "holdout" else int(self.fold[1:])

    @property
    def trial_key(self) -> str:
        return trial_key(self.arch, self.scale, self.recipe, self.seed, self.fold)

    @property
    def run_key(self) -> str:
        """The trial's own name (Ray trial, MLflow run): its grid point's `trial_key`, and for an
        Optuna sample "-<sample_suffix>" (one grid point, many samples)."""
        return f"{self.trial_key}-{self.sample_suffix}" if self.sample_suffix else self.trial_key

    def result_fields(self) -> dict[str, Any]:
        """The hashed fields, as JSON-ready values (a recipe's display name and description are
        words, not settings: renaming a recipe for a figure does not change its trials)."""
        words = dict.fromkeys(_RECIPE_WORDS, True)
        return self.model_dump(
            mode="json", exclude={**dict.fromkeys(NOT_HASHED, True), "recipe_definition": words}
        )

    @property
    def config_hash(self) -> str:
        canonical = json.dumps(self.result_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    # ------------------------------------------------------------------ (de)serialization

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def from_fields(cls, fields: dict[str, Any], source: str = "trial config") -> TrialConfig:
        """Validate `fields`; a failure raises ConfigError naming `source` and every field."""
        if not isinstance(fields, dict):
            raise ConfigError(f"{source}: expected a mapping, got {type(fields).__name__}")
        try:
            return cls.model_validate(fields)
        except ValidationError as err:
            raise ConfigError(_describe(err, source)) from None

    def replace(self, **changes: Any) -> TrialConfig:
        """A validated copy with some fields changed."""
        return type(self).from_fields({**self.to_dict(), **changes})

    # ------------------------------------------------------------------ across Ray Tune

    def to_tune(self) -> dict[str, Any]:
        """What a Ray Tune trial carries, under TUNE_KEY: every field, and the hash the driver
        planned (a worker whose code hashes the fields differently refuses it: `from_tune`)."""
        return {**self.to_dict(), TUNE_HASH: self.config_hash}

    @classmethod
    def from_tune(cls, tune_config: dict[str, Any]) -> TrialConfig:
        """The TrialConfig of a Ray Tune trial's config, ``{TUNE_KEY: to_tune()}`` with an Optuna
        sample's values merged on top (they change the hash, which is then not checked)."""
        fields = tune_config.get(TUNE_KEY)
        if not isinstance(fields, dict):
            raise ConfigError(f"tune config: no {TUNE_KEY!r} mapping (TrialConfig.to_tune())")
        planned = fields.get(TUNE_HASH)
        trial = cls.from_fields({k: v for k, v in fields.items() if k != TUNE_HASH}, "tune config")
        if trial.sample_suffix is None and planned not in (None, trial.config_hash):
            raise ConfigError(
                f"tune config: planned config_hash {planned!r} does not match the config's "
                f"{trial.config_hash!r} (the sweep and the workers run different code?)"
            )
        return trial


#: A Ray Tune trial's config is {TUNE_KEY: TrialConfig.to_tune()}: one key, so that a grid of
#: whole configs is one `tune.grid_search`, and an Optuna sample's fields merge into it.
TUNE_KEY = "trial"
#: The key beside the fields in `TrialConfig.to_tune()`: the config hash the driver planned.
TUNE_HASH = "config_hash"


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (old value, new value)} of the result-affecting settings that differ between two
    configs, as dicts (one may have been saved by another code version); nested fields dotted,
    sorted by name. What the hash leaves out (NOT_HASHED, a recipe's words) is left out."""
    return dict(sorted(_diff(_hashed_view(old), _hashed_view(new)).items()))


def _hashed_view(config: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in config.items() if k not in NOT_HASHED}
    if isinstance(view.get("recipe_definition"), dict):
        words = set(_RECIPE_WORDS)
        definition = view["recipe_definition"]
        view["recipe_definition"] = {k: v for k, v in definition.items() if k not in words}
    return view


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple]:
    changed = {}
    for key in old.keys() | new.keys():
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changed |= _diff(a, b, name + ".")
        elif a != b:
            changed[name] = (a, b)
    return changed


def _describe(err: ValidationError, source: str) -> str:
    head = "invalid trial config" if source == "trial config" else f"{source}: invalid trial config"
    unknown = f"unknown key; valid keys: {', '.join(TrialConfig.model_fields)}"
    return "\n".join([head, *field_errors(err, "(config)", unknown)])


def field_errors(err: ValidationError, top: str, unknown_key: str) -> list[str]:
    """One line per error of `err`, "  <dotted field>: <message>" (`top` for the whole model,
    `unknown_key` for a key the model does not have): the trial config's and the spec's."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or top
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {unknown_key if e['type'] == 'extra_forbidden' else msg}")
    return lines
