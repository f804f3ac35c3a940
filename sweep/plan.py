"""From a spec to the list of trials it means, without running anything.

A grid spec expands to the cross product arch x scale x recipe x seed x fold, in that order (the
order `sweep plan` prints and Ray schedules). Each trial is a `TrialConfig` (trainables.config):
every setting that changes results, so its `config_hash` is what the ledger compares.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sweep.spec import SpecError, SweepSpec
from trainables.config import TrialConfig
from trainables.vocabulary import GRID_AXES, trial_key

# The paper's runs took about 9 GPU-minutes each (100 epochs at 256 px on the full LGG set);
# the estimate scales that by epochs and pixels. It is a rough budget, not a promise.
PAPER_GPU_MINUTES_PER_RUN = 9.0


@dataclass(frozen=True)
class PlannedTrial:
    config: TrialConfig

    @property
    def key(self) -> str:
        return self.config.trial_key

    def axes(self) -> dict:
        return {axis: getattr(self.config, axis) for axis in GRID_AXES}


@dataclass(frozen=True)
class Plan:
    spec: SweepSpec
    trials: list[PlannedTrial]

    def counts(self) -> dict[str, dict[str, int]]:
        """Trials per value of each axis."""
        out: dict[str, dict[str, int]] = {}
        for axis in GRID_AXES:
            counter = Counter(str(t.axes()[axis]) for t in self.trials)
            out[axis] = dict(counter)
        return out

    def estimated_gpu_hours(self) -> float:
        """Paper-calibrated budget: 9 GPU-minutes per 100 epochs at 256 px, scaled."""
        total = 0.0
        for t in self.trials:
            c = t.config
            total += PAPER_GPU_MINUTES_PER_RUN * (c.epochs / 100) * (c.image_size / 256) ** 2
        return total / 60

    def to_rows(self) -> list[dict]:
        """The plan as the parent run's plan.json: one `plan_row` per trial, with its hash."""
        return [{**plan_row(**t.axes()), "config_hash": t.config.config_hash} for t in self.trials]


def plan_row(**axes: Any) -> dict:
    """One trial of plan.json (what `sweep.runs` reads back): its key and its grid axes
    (arch, scale, recipe, seed, fold)."""
    return {"trial_key": trial_key(**axes), **{axis: axes[axis] for axis in GRID_AXES}}


def trial_config(
    spec: SweepSpec, arch: str, scale: str, recipe: str, seed: int, fold: str
) -> TrialConfig:
    """The full config of one trial: the grid point, the data, the protocol overrides."""
    data = spec.data
    fields = {
        "arch": arch,
        "scale": scale,
        "recipe": recipe,
        "recipe_definition": spec.recipe(recipe).to_dict(),
        "seed": seed,
        "fold": fold,
        "split_seed": data.split_seed,
        "n_folds": data.n_folds,
        "image_size": data.image_size,
        "data_path": data.path,
        "synthetic": data.synthetic.model_dump() if data.synthetic else None,
        "model_overrides": dict(spec.model_overrides),
        **spec.protocol,
    }
    return TrialConfig.from_fields(fields, source="protocol")


def expand(spec: SweepSpec) -> Plan:
    """Every grid point as a planned trial (for an Optuna spec: the grid its samples run on)."""
    if spec.search is not None:
        tunable = set(TrialConfig.model_fields) - {*GRID_AXES, "sample_suffix"}
        unknown = sorted(set(spec.search.space) - tunable)
        if unknown:
            raise SpecError(
                f"search.space: {unknown} are not trial settings; "
                f"valid: {', '.join(sorted(tunable))}"
            )
    g = spec.grid
    trials = [
        PlannedTrial(trial_config(spec, *point))
        for point in itertools.product(g.arch, g.scale, g.recipe, g.seed, g.fold)
    ]
    return Plan(spec=spec, trials=trials)
