"""The sweep spec: one YAML file that describes a whole study.

A spec is validated into a frozen, typed `SweepSpec` before anything runs. Unknown keys are errors,
and every error names the field (as a dotted path) and, for choices, the valid values:

    name: quickstart                 # experiment name in MLflow, folder name in storage
    data:
      path: /data/kaggle_3m          # the LGG kaggle_3m folder, or leave out and use `synthetic`
      synthetic: {patients: 12, size: 64, seed: 0}
      split: holdout                 # holdout | kfold
      n_folds: 5                     # the protocol's 5; 2 to 10 (trainables.vocabulary)
      split_seed: 2026
      image_size: 64
    recipes:                         # optional: recipes declared here (usable in grid.recipe)
      2d_rht_sr_4o6mse:
        base: 2d_rht_sr              # a built-in to start from (or give all six slots)
        fprop_weight: {four_over_six: mse}   # Operand fields merged into the base's slot
        dgrad_weight: {four_over_six: mse}
    grid:                            # the axes; every combination is one trial
      arch: [cnn, swin]
      scale: [tiny]
      recipe: [baseline, nvfp4, 2d_rht_sr, 2d_rht_sr_4o6mse]
      seed: [2026, 2027]
      fold: [holdout]                # or f0..f4 with split: kfold
    protocol: {epochs: 3, batch_size: 8}     # overrides of the paper's training protocol, and
                                     # compile: auto | on | off (torch.compile the step;
                                     # auto: on CUDA only; a bare on/off reads as a boolean),
                                     # backend: emulated | te (see trainables.config),
                                     # callbacks: ["pkg.module:factory", {path, args}]
                                     # (loop callbacks each trial imports; not hashed:
                                     # trainables.callbacks)
    model_overrides: {}              # passed to models.build_model (e.g. swin shift option)
    resources: {cpus_per_trial: 1, gpus_per_trial: 0.25, max_concurrent: 4,
                pending_warning_s: 300}   # say why a trial waits longer than this
    tracking_uri: null               # default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    tracking: {system_metrics: auto, system_metrics_interval_s: 10}   # auto: on CUDA trials
    storage: ./sweeps                # a folder, a shared filesystem, or s3://bucket/prefix
                                     # (default: $SWEEP_STORAGE, else ./sweeps)
    storage_endpoint: null           # e.g. http://minio:9000 for s3:// on MinIO
                                     # (default: $AWS_ENDPOINT_URL; keys from the environment)
    storage_shared: false            # the storage folder is on a filesystem every node mounts
    failure: {max_retries: 2, tracking_wait_s: 60}
    search: null                     # or an Optuna search, see `SearchSpec`
    save_weights: false              # log each trial's best weights to MLflow
    analyze: false                   # run `sweep analyze NAME` when the sweep ends

A declared recipe has the six operand slots of quant.recipes (fprop_input, fprop_weight,
dgrad_grad_output, dgrad_weight, wgrad_grad_output, wgrad_input), each a mapping of Operand fields
(mode, block, rht, stochastic, four_over_six, four_over_six_fast, e4m3_max, row_scaled), or a
`base` built-in plus overrides, and optional display_name/description. It is validated before
anything runs (errors name the recipe, the slot and the rule), and its full definition travels
in every trial's config (`recipe_definition`): hashed, logged to MLflow, rebuilt by the worker.

The spec knows nothing about Ray; `sweep.plan` turns it into trial configs. It holds no
credentials: a field that looks like one is refused (`sweep.cluster.credential_fields`), since the
spec is saved to the sweep's storage and logged to MLflow; keys come from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.config import SyntheticData, field_errors
from trainables.vocabulary import ARCHS, MAX_FOLDS, N_FOLDS, folds, scales

if TYPE_CHECKING:
    from sweep.storage import SweepStore


class SpecError(ValueError):
    """A spec that cannot run; the message names the file and every offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    path: str | None = None
    synthetic: SyntheticData | None = None
    split: Literal["holdout", "kfold"] = "holdout"
    n_folds: int = Field(N_FOLDS, ge=2, le=MAX_FOLDS)
    split_seed: int = 2026
    image_size: int = Field(256, ge=16)

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("give exactly one of data.path (a kaggle_3m folder) or data.synthetic")
        return self


class GridSpec(_Strict):
    arch: list[str]
    scale: list[str]
    recipe: list[str]
    seed: list[int]
    fold: list[str] = ["holdout"]

    @field_validator("arch", "scale", "recipe", "seed", "fold")
    @classmethod
    def _non_empty_unique(cls, values: list, info) -> list:
        if not values:
            raise ValueError(f"grid.{info.field_name} is empty: give at least one value")
        duplicates = sorted({str(v) for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"duplicate values {duplicates}")
        return values

    @field_validator("arch", "scale", "fold")
    @classmethod
    def _known_values(cls, values: list[str], info) -> list[str]:
        choices = {"arch": ARCHS, "scale": scales(), "fold": folds()}[info.field_name]
        return _check_choices(values, choices)

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, values: list[str], info) -> list[str]:
        from quant import list_recipes

        declared = tuple((info.context or {}).get("declared_recipes", ()))
        return _check_choices(values, (*list_recipes(), *declared))


class ResourceSpec(_Strict):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent: int | None = Field(None, ge=1)
    # A trial waiting longer than this for CPUs/GPUs gets a progress line saying why.
    pending_warning_s: float = Field(300.0, gt=0)

    @field_validator("gpus_per_trial")
    @classmethod
    def _packable(cls, gpus: float) -> float:
        # Ray packs fractional requests onto one GPU only for fractions <= 1; above 1 it needs
        # whole GPUs (1.5 GPUs is not a request any scheduler can honour).
        if gpus > 1 and gpus != int(gpus):
            raise ValueError(f"{gpus} GPUs: use a fraction <= 1 to pack, or a whole number")
        return gpus


class FailureSpec(_Strict):
    max_retries: int = Field(2, ge=0)
    # How long a trial's end waits for an unreachable MLflow before it leaves its undelivered
    # records in the sweep's storage (delivered by the next run/resume/status/sync).
    tracking_wait_s: float = Field(60.0, ge=0)


class TrackingSpec(_Strict):
    """What each trial records beyond its metrics; where it records is `tracking_uri`."""

    # MLflow system metrics (CPU, memory; GPU with the `gpu` extra): auto = on CUDA trials only.
    # YAML 1.1 reads on/off as booleans, so true/false/auto are the spellings.
    system_metrics: bool | Literal["auto"] = "auto"
    system_metrics_interval_s: float = Field(10.0, gt=0)


class SearchParam(_Strict):
    type: Literal["loguniform", "uniform", "choice", "int"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> SearchParam:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice parameter needs a non-empty `values` list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} parameter needs low < high")
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError("a loguniform parameter needs low > 0")
        return self


class SearchSpec(_Strict):
    """Optuna (through Ray Tune's OptunaSearch) over protocol settings, within a trial budget."""

    algorithm: Literal["optuna"] = "optuna"
    metric: str = "val_auprc"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(8, ge=1)
    seed: int = 0
    space: dict[str, SearchParam]

    @field_validator("space")
    @classmethod
    def _non_empty(cls, space: dict) -> dict:
        if not space:
            raise ValueError("search.space is empty: name at least one protocol setting to tune")
        return space


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    data: DataSpec
    recipes: dict[str, dict[str, Any]] = {}
    grid: GridSpec
    protocol: dict[str, Any] = {}
    model_overrides: dict[str, Any] = {}
    resources: ResourceSpec = ResourceSpec()
    tracking_uri: str | None = None
    tracking: TrackingSpec = TrackingSpec()
    storage: str | None = None  # default: $SWEEP_STORAGE, else ./sweeps
    storage_endpoint: str | None = None
    storage_shared: bool = False  # a local path every node of a cluster mounts (NFS, EFS...)
    failure: FailureSpec = FailureSpec()
    search: SearchSpec | None = None
    # each trial's best weights to MLflow; `save_weights` is its documented name in the YAML
    log_weights: bool = Field(False, alias="save_weights")
    analyze: bool = False  # run `sweep analyze NAME` when the sweep ends

    @field_validator("recipes")
    @classmethod
    def _declared_recipes(cls, recipes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from quant.recipes import declare_recipe

        problems = []
        for name, data in recipes.items():
            try:
                declare_recipe(name, data)
            except ValueError as err:
                problems.append(str(err))
        if problems:
            raise ValueError("; ".join(problems))
        return recipes

    def recipe(self, name: str):
        """The recipe `name` of this spec: one declared in `recipes`, else a built-in."""
        from quant.recipes import declare_recipe, get_recipe

        if name in self.recipes:
            return declare_recipe(name, self.recipes[name])
        return get_recipe(name)

    @model_validator(mode="after")
    def _folds_match_split(self) -> SweepSpec:
        folds = set(self.grid.fold)
        if self.data.split == "holdout" and folds != {"holdout"}:
            raise ValueError("grid.fold must be [holdout] when data.split is holdout")
        if self.data.split == "kfold":
            valid = {f"f{i}" for i in range(self.data.n_folds)}
            if not folds <= valid:
                raise ValueError(
                    f"grid.fold {sorted(folds - valid)} not in the {self.data.n_folds} folds of "
                    f"data.split kfold; valid: {sorted(valid)}"
                )
        return self

    def resolved_storage(self) -> str:
        """The storage root: `storage`, else $SWEEP_STORAGE, else ./sweeps (from the cwd)."""
        return resolve_storage(self.storage)


def resolve_storage(storage: str | None) -> str:
    storage = storage or os.environ.get("SWEEP_STORAGE") or "./sweeps"
    if "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage).expanduser().resolve())


def _check_choices(values: list[str], valid: tuple[str, ...]) -> list[str]:
    unknown = [v for v in values if v not in valid]
    if unknown:
        raise ValueError(f"unknown {unknown}; valid choices: {', '.join(valid)}")
    return values


def parse_spec(raw: dict, source: str = "<spec>") -> SweepSpec:
    """Validate a spec dict; errors name `source` and every field as a dotted path."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a sweep spec is a YAML mapping, got {type(raw).__name__}")
    from sweep.cluster import CREDENTIALS_HELP, credential_fields

    secrets = credential_fields(raw)
    if secrets:
        fields = "\n".join(f"  {where}: looks like a credential" for where in secrets)
        raise SpecError(f"{source}: invalid sweep spec\n{fields}\n  ({CREDENTIALS_HELP})")
    declared = raw.get("recipes")
    context = {"declared_recipes": list(declared) if isinstance(declared, dict) else []}
    try:
        return SweepSpec.model_validate(raw, context=context)
    except ValidationError as err:
        lines = [f"{source}: invalid sweep spec", *field_errors(err, "(top level)", "unknown key")]
        raise SpecError("\n".join(lines)) from None


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a YAML spec file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    return parse_spec(raw, source=str(path))


def stored_spec(store: SweepStore) -> SweepSpec:
    """The spec a sweep was last run with, from its storage (`sweep resume`, `sweep status`)."""
    text = store.read_text(store.SPEC_FILE)
    return parse_spec(yaml.safe_load(text), source=store.path(store.SPEC_FILE))


def spec_to_yaml(spec: SweepSpec) -> str:
    """The spec as YAML `load_spec` reads back (fields by their documented YAML names)."""
    dump = spec.model_dump(mode="json", exclude_none=False, by_alias=True)
    return yaml.safe_dump(dump, sort_keys=False)
