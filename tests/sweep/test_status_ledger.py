"""`sweep status` and the ledger's conflict check for trials that ended under other settings.

A sweep's config hash covers the code version (package version + git commit), so after a commit
every finished trial's hash differs from the plan's. Status must still report those trials as
finished (flagged, naming what changed), and `sweep run` must refuse to mix them with new
results, saying which code versions are involved and what to do.
"""

from __future__ import annotations

import pytest

from sweep.ledger import FINISHED, ConfigConflict, Ledger
from sweep.plan import expand
from sweep.status import format_status, sweep_status

OLD_CODE = "0.0.9+gdeadbeef0000"


@pytest.fixture()
def finished_sweep(stored_sweep):
    spec, store = stored_sweep("ended")
    trials = expand(spec).trials
    ledger = Ledger(store, {})
    # seed 1 ended under an older code version, seed 2 under today's
    old = trials[0].config.replace(code_version=OLD_CODE)
    ledger.record(old.trial_key, old.config_hash, old.to_dict(), FINISHED, metrics={"epoch": 3})
    now = trials[1].config
    ledger.record(now.trial_key, now.config_hash, now.to_dict(), FINISHED, metrics={"epoch": 3})
    ledger.save()
    return store, trials


def test_status_reports_ledger_state_and_flags_changed_settings(finished_sweep):
    store, trials = finished_sweep
    rows = {r.key: r for r in sweep_status(store)}
    assert [rows[t.key].state for t in trials] == ["FINISHED", "FINISHED"]
    assert rows[trials[0].key].changed == ["code_version"]
    assert rows[trials[1].key].changed is None
    text = format_status("ended", list(rows.values()))
    assert text.splitlines()[0] == "sweep ended: 2 finished"
    assert "FINISHED*" in text and "changed: code_version" in text


def test_run_refuses_to_mix_code_versions_and_says_how_to_continue(finished_sweep):
    store, trials = finished_sweep
    ledger = Ledger.load(store)
    planned = {t.key: (t.config.config_hash, t.config.to_dict()) for t in trials}
    with pytest.raises(ConfigConflict) as err:
        ledger.check_conflicts(planned)
    message = str(err.value)
    assert f"{trials[0].key}: changed code_version" in message
    assert trials[1].key not in message
    assert OLD_CODE in message and trials[0].config.code_version in message
    assert "Check out that commit" in message
