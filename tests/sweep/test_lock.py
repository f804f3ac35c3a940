"""One driver per sweep (sweep.lock): on local disk with flock, and through a non-local pyarrow
filesystem (the object-store protocol: write, settle, read back), without Ray."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow.fs as pafs
import pytest

from sweep.lock import LockHeld, LockRecord, acquire, holder, read_record
from sweep.storage import SweepStore

HOLD = """
import sys, time
from sweep.lock import acquire
from sweep.storage import SweepStore
lock = acquire(SweepStore.open(sys.argv[1], "s"))
print("held", flush=True)
time.sleep(600)
"""


def _local(tmp_path) -> SweepStore:
    return SweepStore.open(str(tmp_path), "s")


def _object_store(tmp_path) -> SweepStore:
    """The same folder behind a filesystem that is not LocalFileSystem: the object-store path."""
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    return SweepStore(fs=fs, root="s", storage_uri=f"mem://{tmp_path}/s", name="s")


def _holder_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_driver_is_refused_naming_the_first_and_takes_over_once_it_is_killed(tmp_path):
    proc = _holder_process(tmp_path)
    try:
        store = _local(tmp_path)
        with pytest.raises(LockHeld) as err:
            acquire(store)
        assert f"PID {proc.pid} on host" in str(err.value) and "since" in str(err.value)
        assert holder(store).pid == proc.pid  # status reads it without locking
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The kernel dropped the dead driver's flock; its record is still there, but stale.
    assert read_record(store).pid == proc.pid and holder(store) is None
    with acquire(store) as lock:
        assert holder(store) == lock.record and lock.record.pid == os.getpid()
    assert not (tmp_path / "s" / SweepStore.LOCK_FILE).exists()  # released: the file is gone


def _race(takers: int, take_lock) -> list:
    """Start `takers` threads at once, each calling `take_lock()`; the locks they won."""
    won, barrier = [], threading.Barrier(takers)

    def take():
        barrier.wait()
        with contextlib.suppress(LockHeld):
            won.append(take_lock())

    threads = [threading.Thread(target=take) for _ in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_local_lock_admits_one_of_many_concurrent_takers(tmp_path):
    store = _local(tmp_path)
    won = _race(8, lambda: acquire(store))
    assert len(won) == 1
    won[0].release()


def _stale(host: str, pid: int, heartbeat_age: float) -> str:
    now = time.time()
    return json.dumps(
        {
            "host": host,
            "pid": pid,
            "started": now - 3600,
            "heartbeat": now - heartbeat_age,
            "token": "old",
        }
    )


def test_object_store_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    store = _object_store(tmp_path)
    (tmp_path / "s").mkdir()
    lock_path = tmp_path / "s" / SweepStore.LOCK_FILE
    lock_path.write_text(_stale("other-host", 1, heartbeat_age=5))  # fresh heartbeat elsewhere
    with pytest.raises(LockHeld, match="PID 1 on host other-host"):
        acquire(store, settle=0.01)

    lock_path.write_text(_stale("other-host", 1, heartbeat_age=600))  # heartbeat too old
    lock = acquire(store, settle=0.01)
    assert read_record(store).token == lock.record.token
    lost = []
    lock.on_lost = lost.append
    lock_path.write_text(_stale("thief", 2, heartbeat_age=0))  # another driver overwrote it
    lock._heartbeat()
    assert [r.host for r in lost] == ["thief"]
    lock.release()
    assert lock_path.exists()  # not ours any more: left in place


def test_object_store_lock_taken_over_at_once_from_a_dead_pid_on_this_host(tmp_path):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = _object_store(tmp_path)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / SweepStore.LOCK_FILE).write_text(_stale(socket.gethostname(), dead.pid, 0))
    with acquire(store, settle=0.01) as lock:
        assert holder(store) == lock.record
    assert holder(store) is None and read_record(store) is None


def test_object_store_lock_tries_again_after_an_unreadable_read_back(tmp_path, monkeypatch):
    """Two records written at once on a filesystem without atomic writes can interleave into
    an unreadable file (seen once in CI: 4 concurrent takers, 0 winners). A taker that reads
    back nothing readable tries again instead of refusing."""
    import sweep.lock as lock_module

    store = _object_store(tmp_path)
    written, real_write = [], lock_module._write

    def interleaved_once(store_, record, fd):
        real_write(store_, record, fd)
        if not written:  # the first write: another taker's bytes land over ours
            (tmp_path / "s" / SweepStore.LOCK_FILE).write_text('{"host": "a", "pi')
        written.append(record.token)

    monkeypatch.setattr(lock_module, "_write", interleaved_once)
    lock = acquire(store, settle=0.01)
    assert len(written) >= 2 and read_record(store).token == lock.record.token == written[1]
    lock.release()


def test_object_store_lock_admits_one_of_concurrent_takers(tmp_path):
    store = _object_store(tmp_path)
    # The product's settle time: two winners need a taker stalled longer than it.
    won = _race(4, lambda: acquire(store, settle=2.0))
    assert len(won) == 1
    won[0].release()


def test_record_round_trips_and_describes_itself():
    record = LockRecord("h", 12, 0.0, 5, "t")
    assert LockRecord(**json.loads(record.to_json())) == record
    assert record.describe().startswith("PID 12 on host h (since ")
