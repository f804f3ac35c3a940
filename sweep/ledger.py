"""The ledger: what a sweep has already produced, keyed by trial key and config hash.

It is what makes `sweep run` idempotent. A trial whose key is FINISHED with the same config hash
is skipped; a key that finished under a different hash means a setting that changes results was
edited in the spec, and the run stops and names the trials and fields instead of silently mixing
old and new results. Only the driver writes the ledger, atomically, after every trial that ends,
so a driver killed at any moment loses at most the trials that were still running, and those
resume from their checkpoints.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from sweep.spec import SpecError
from sweep.storage import SweepStore
from trainables.config import TrialConfig, config_diff

FINISHED = "FINISHED"
FAILED = "FAILED"


@dataclass
class Entry:
    config_hash: str
    config: dict
    state: str = "PENDING"
    metrics: dict = field(default_factory=dict)
    error: str | None = None  # why it failed: "<exception type>: <message>" (one line)
    failure_kind: str | None = None  # trainables.failures kinds: non_finite_loss, data_error, ...
    updated: float = 0.0


class LedgerError(SpecError):
    """The ledger file cannot be read; the message names it."""


class ConfigConflict(RuntimeError):
    """Finished trials whose result-affecting settings changed since they ran."""


class Ledger:
    def __init__(self, store: SweepStore, entries: dict[str, Entry]):
        self.store = store
        self.entries = entries

    @classmethod
    def load(cls, store: SweepStore) -> Ledger:
        if not store.exists(store.LEDGER_FILE):
            return cls(store, {})
        try:
            raw = json.loads(store.read_text(store.LEDGER_FILE))
            return cls(store, {key: Entry(**value) for key, value in raw.items()})
        except (ValueError, TypeError, AttributeError) as err:
            raise LedgerError(
                f"{store.path(store.LEDGER_FILE)}: corrupt ledger ({err}); restore it, or move it "
                "away to forget which trials finished (they would run again)"
            ) from None

    def save(self) -> None:
        payload = {key: asdict(entry) for key, entry in sorted(self.entries.items())}
        self.store.write_text(json.dumps(payload, indent=1, sort_keys=True), self.store.LEDGER_FILE)

    def finished(self, key: str, config_hash: str) -> bool:
        entry = self.entries.get(key)
        return entry is not None and entry.state == FINISHED and entry.config_hash == config_hash

    def check_conflicts(self, planned: dict[str, tuple[str, dict]]) -> None:
        """Raise ConfigConflict if a finished trial key is planned again with another hash."""
        lines, code = [], set()
        for key, (config_hash, config) in sorted(planned.items()):
            entry = self.entries.get(key)
            if entry is None or entry.state != FINISHED or entry.config_hash == config_hash:
                continue
            changed = list(config_diff(entry.config, config))
            lines.append(f"  {key}: changed {', '.join(changed)}")
            if "code_version" in changed:
                code.add((entry.config.get("code_version"), config.get("code_version")))
        if lines:
            hint = (
                "Give the sweep a new name to run the changed study, or restore the old settings."
            )
            if code:
                then, now = sorted(code)[0]
                hint += (
                    f"\ncode_version is the package version and git commit a trial ran from "
                    f"({then} then, {now} now): results may differ across code versions, so a "
                    f"sweep is finished with the code it started with. Check out that commit "
                    f"to continue it."
                )
            raise ConfigConflict(
                f"sweep {self.store.name!r}: {len(lines)} finished trial(s) would now run with "
                "different result-affecting settings:\n" + "\n".join(lines) + "\n" + hint
            )

    def record_trial(self, config: TrialConfig, state: str, **extra) -> None:
        """Record a planned trial under its grid key (its tracking settings are not kept)."""
        kept = config.model_copy(update={"tracking": None}).to_dict()
        self.record(config.trial_key, config.config_hash, kept, state, **extra)

    def record(self, key: str, config_hash: str, config: dict, state: str, **extra) -> None:
        entry = self.entries.get(key) or Entry(config_hash=config_hash, config=config)
        entry.config_hash, entry.config, entry.state = config_hash, config, state
        entry.metrics = extra.get("metrics", entry.metrics)
        entry.error = extra.get("error")
        entry.failure_kind = extra.get("failure_kind")
        entry.updated = time.time()
        self.entries[key] = entry
