"""The sweep <-> trial contract without a Ray cluster: what the runner hands Ray Tune for a trial is
its whole TrialConfig (tracking settings included), and what the trainable, the trial names and
the progress line read back is that TrialConfig; an Optuna sample merges its values and its
suffix on top."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sweep.plan import expand
from sweep.progress import LedgerCallback, ProgressCallback
from sweep.runner import OptunaSpace, _trial_name, _tune_fields, open_store, trial_tracking
from sweep.spec import parse_spec
from trainables.config import TUNE_KEY, TrialConfig
from trainables.vocabulary import sample_suffix

RAW = {
    "name": "contract",
    "data": {"synthetic": {"patients": 6, "size": 32}, "image_size": 32},
    "grid": {"arch": ["cnn"], "scale": ["tiny"], "recipe": ["baseline"], "seed": [1]},
    "tracking": {"system_metrics": True, "system_metrics_interval_s": 2.5},
    "failure": {"tracking_wait_s": 7},
    "save_weights": True,
    "search": {"space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
}


@pytest.fixture()
def sweep(tmp_path):
    spec = parse_spec({**RAW, "storage": str(tmp_path / "sweeps")})
    store = open_store(spec)
    tracking = trial_tracking(spec, store, "sqlite:///x.db", "parent-1")
    return spec, store, expand(spec).trials[0], tracking


def test_the_spec_tracking_settings_become_the_trials_tracking_config(sweep):
    spec, store, _, tracking = sweep
    assert (tracking.tracking_uri, tracking.experiment, tracking.parent_run_id) == (
        "sqlite:///x.db",
        "contract",
        "parent-1",
    )
    assert tracking.log_weights  # the spec's save_weights
    assert (tracking.system_metrics, tracking.system_metrics_interval_s) == (True, 2.5)
    assert tracking.finish_timeout_s == 7
    assert tracking.outbox.startswith(store.storage_uri)


def test_ray_carries_the_whole_trial_config(sweep):
    _, _, planned, tracking = sweep
    tune_config = {TUNE_KEY: _tune_fields(planned, tracking)}
    got = TrialConfig.from_tune(tune_config)
    assert got == planned.config.replace(tracking=tracking.model_dump())
    assert got.config_hash == planned.config.config_hash
    assert _trial_name(SimpleNamespace(config=tune_config)) == planned.key


def test_an_optuna_sample_is_named_by_the_values_it_sampled(sweep):
    from ray.tune.search.optuna import OptunaSearch

    spec, _, planned, tracking = sweep
    searcher = OptunaSearch(OptunaSpace(spec.search.space), metric="val_auprc", mode="max", seed=0)
    suggested = searcher.suggest("sample-1")[TUNE_KEY]  # what Ray Tune merges into the config
    lr = suggested["lr"]
    assert 1e-4 <= lr <= 1e-2 and suggested == {
        "lr": lr,
        "sample_suffix": sample_suffix({"lr": lr}),
    }

    sample = SimpleNamespace(config={TUNE_KEY: {**_tune_fields(planned, tracking), **suggested}})
    config = TrialConfig.from_tune(sample.config)
    assert config.lr == lr and config.trial_key == planned.key
    assert _trial_name(sample) == config.run_key == f"{planned.key}-{suggested['sample_suffix']}"


def test_progress_and_ledger_read_the_trial_config(sweep, capsys):
    from sweep.ledger import Ledger

    _, store, planned, tracking = sweep
    done = SimpleNamespace(
        config={TUNE_KEY: _tune_fields(planned, tracking)}, last_result={"test_auprc": 0.5}
    )
    LedgerCallback(store).on_trial_complete(0, [], done)
    entry = Ledger.load(store).entries[planned.key]
    assert entry.state == "FINISHED" and entry.config_hash == planned.config.config_hash
    assert entry.config == planned.config.to_dict()  # the ledger keeps no tracking settings
    ProgressCallback(total=1).on_trial_complete(0, [], done)
    assert f"finished {planned.key} test_auprc=0.5000 (1/1)" in capsys.readouterr().out

    sample = {**_tune_fields(planned, tracking), "sample_suffix": "0123abcd"}
    LedgerCallback(store).on_trial_complete(0, [], SimpleNamespace(config={TUNE_KEY: sample}))
    assert len(Ledger.load(store).entries) == 1  # a sample: its study is recorded as a whole
