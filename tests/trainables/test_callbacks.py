"""Loop callbacks a trial config names by import path (trainables.callbacks): parsed and checked
with the config, built in the process that trains, refused with the field and the path named."""

from __future__ import annotations

import json

import pytest

from tests.support.hooks import (
    FailAtEpoch,
    InjectedFailure,
    SlowEpochs,
    fail_at_epoch,
    slow_epochs,
)
from tests.support.trials import tiny_config
from trainables.callbacks import Callback, config_callbacks
from trainables.config import ConfigError


def test_a_path_or_a_path_with_args(tmp_path):
    config = tiny_config(tmp_path, callbacks=["tests.support.hooks:SlowEpochs", fail_at_epoch(3)])
    assert [(c.path, c.args) for c in config.callbacks] == [
        ("tests.support.hooks:SlowEpochs", {}),
        ("tests.support.hooks:FailAtEpoch", {"epoch": 3}),
    ]
    again = type(config).from_fields(json.loads(config.to_json()))
    assert again == config and again.config_hash == tiny_config(tmp_path).config_hash


@pytest.mark.parametrize("path", ["tests.support.hooks", "hooks:", ":SlowEpochs", "a-b:c"])
def test_a_malformed_path_is_refused_with_the_config(tmp_path, path):
    with pytest.raises(ConfigError, match=r"callbacks\.0\.path: expected an import path"):
        tiny_config(tmp_path, callbacks=[path])


def test_the_config_builds_fresh_callbacks(tmp_path):
    config = tiny_config(tmp_path, callbacks=[slow_epochs(0.5), fail_at_epoch(2)])
    first, second = config_callbacks(config), config_callbacks(config)
    assert [type(c) for c in first] == [SlowEpochs, FailAtEpoch]
    assert first[0].seconds == 0.5 and first[1].epoch == 2
    assert first[1] is not second[1]  # per attempt: FailAtEpoch keeps the attempt's first epoch


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("tests.support.nowhere:Hook", r"callbacks\[0\] 'tests.support.nowhere:Hook': cannot "
         r"import module 'tests.support.nowhere'"),
        ("tests.support.hooks:Missing", r"module 'tests.support.hooks' has no attribute 'Missing'"),
        ("tests.support.hooks:fail_at_epoch", r"cannot be called with args \{\}"),
        ({"path": "tests.support.hooks:slow_epochs", "args": {"seconds": 1}},
         r"built a dict, not a trainables.callbacks.Callback"),
    ],
)  # fmt: skip
def test_a_callback_that_cannot_be_built_names_the_field_and_the_path(tmp_path, entry, message):
    config = tiny_config(tmp_path, callbacks=[entry])
    with pytest.raises(ConfigError, match=message):
        config_callbacks(config)


def test_fail_at_epoch_fails_only_an_attempt_that_reached_it_from_before():
    fresh = FailAtEpoch(3)  # it reads nothing of the run: None stands for it
    fresh.on_epoch_start(1, None)
    fresh.on_epoch_start(2, None)
    with pytest.raises(InjectedFailure, match="injected failure at the start of epoch 3"):
        fresh.on_epoch_start(3, None)
    resumed = FailAtEpoch(3)  # restored from epoch 2's checkpoint: epoch 3 is its first
    resumed.on_epoch_start(3, None)
    resumed.on_epoch_start(4, None)
    assert isinstance(resumed, Callback)
