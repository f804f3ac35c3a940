"""One driver per sweep: a lock file in the sweep's storage, `<storage>/<name>/driver.lock`.

    with acquire(store) as lock:      # raises LockHeld naming the running driver
        ...                           # run the sweep
    holder(store)                     # the live driver's LockRecord, or None; takes no lock

The file holds a JSON `LockRecord`: host, PID, start time, a heartbeat time (rewritten every
`ttl / 4` seconds by a daemon thread) and a random token that tells this acquisition from any
other. A lock counts as stale, and is taken over, when its process is gone (same host: checked by
PID) or, from another host, when its heartbeat is older than `ttl` seconds.

What is guaranteed, and how:

- Local disk (and shared filesystems that honour `flock`, e.g. NFSv4): the file is locked with
  `flock(LOCK_EX | LOCK_NB)`, which the kernel releases when the process dies, however it dies.
  Exactly one process holds it; a taker re-checks after locking that the path still names the file
  it locked, so a concurrent release (which unlinks the file) cannot let two holders in.
- Object stores (s3://, through pyarrow): there is no create-if-absent in pyarrow's filesystem
  API, so the lock is taken by writing the record, waiting `settle` seconds, and reading it back:
  the driver whose token is read back wins, every other one gets LockHeld. Two drivers can both
  win only if one of them stalls for more than `settle` seconds between reading "no live lock"
  and writing its record (the other's read-back happened before that write). S3 is strongly
  consistent for reads after writes, so this is the only window. A holder checks its token at
  every heartbeat and calls `on_lost` if another driver's token is there. Where writes are not
  atomic (a shared or emulated filesystem behind pyarrow), two records written at once can
  interleave into an unreadable file; every contender then reads back no token, so each tries
  again after a random pause (`UNREADABLE_RETRIES` times), rather than all refusing.

A lock left by a SIGKILLed driver is released at once on local disk (the kernel drops `flock`);
on an object store it is taken over at once from the same host (its PID is gone) and after `ttl`
seconds from any other host.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from sweep.storage import SweepStore

DEFAULT_TTL = 60.0  # seconds without a heartbeat after which another host may take the lock
DEFAULT_SETTLE = 2.0  # object stores: seconds between writing the record and reading it back
UNREADABLE_RETRIES = 3  # object stores: new attempts after reading back an unreadable record


class LockHeld(RuntimeError):
    """Another live driver holds the sweep's lock; `record` says which (None: it is starting)."""

    def __init__(self, store: SweepStore, record: LockRecord | None):
        self.record = record
        who = record.describe() if record else "another driver that is starting up"
        super().__init__(
            f"sweep {store.name!r} is already being run by {who} "
            f"(lock: {store.path(store.LOCK_FILE)}); wait for it to end or stop that process"
        )


@dataclass(frozen=True)
class LockRecord:
    host: str
    pid: int
    started: float
    heartbeat: float
    token: str

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"PID {self.pid} on host {self.host} (since {since})"

    def alive(self, ttl: float = DEFAULT_TTL) -> bool:
        """Same host: is the process there? Another host: was the heartbeat within `ttl`?"""
        if self.host == socket.gethostname():
            return _pid_alive(self.pid)
        return time.time() - self.heartbeat < ttl

    def to_json(self) -> str:
        # Fixed key order and whole-second heartbeats: a heartbeat rewrite keeps the file's length.
        return json.dumps(asdict(self))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _parse(text: str) -> LockRecord | None:
    try:
        return LockRecord(**json.loads(text))
    except (ValueError, TypeError):  # empty (being written) or not ours
        return None


def read_record(store: SweepStore) -> LockRecord | None:
    """The record in the lock file, live or stale; None if there is none (or it is unreadable)."""
    try:
        return _parse(store.read_text(store.LOCK_FILE))
    except (FileNotFoundError, OSError):
        return None


def holder(store: SweepStore, ttl: float = DEFAULT_TTL) -> LockRecord | None:
    """The driver running the sweep now, or None. Reads only: never takes or changes the lock."""
    record = read_record(store)
    return record if record is not None and record.alive(ttl) else None


class DriverLock:
    """A held lock: keeps its heartbeat going until `release()` (idempotent; also on exit)."""

    def __init__(self, store: SweepStore, record: LockRecord, fd: int | None, ttl: float):
        self.store, self.record, self._fd, self.ttl = store, record, fd, ttl
        self.on_lost: Callable[[LockRecord | None], None] | None = None
        self._released = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sweep-lock", daemon=True)
        self._thread.start()

    def __enter__(self) -> DriverLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            with contextlib.suppress(OSError):  # a storage hiccup: try again next beat
                self._heartbeat()

    def _heartbeat(self) -> None:
        if self._fd is None:  # object store: is the lock still ours?
            current = read_record(self.store)
            if current is None or current.token != self.record.token:
                if self.on_lost is not None:
                    self.on_lost(current)
                self._stop.set()
                return
        self.record = LockRecord(**(asdict(self.record) | {"heartbeat": int(time.time())}))
        _write(self.store, self.record, self._fd)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        if self._fd is not None:
            # Unlink while still holding the lock, then close: a taker that opened the old file
            # sees (by its inode check) that the path no longer names it, and starts over.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.store.path(self.store.LOCK_FILE))
            os.close(self._fd)
            self._fd = None
        else:
            current = read_record(self.store)
            if current is not None and current.token == self.record.token:
                with contextlib.suppress(FileNotFoundError, OSError):
                    self.store.fs.delete_file(self.store.path(self.store.LOCK_FILE))


def _write(store: SweepStore, record: LockRecord, fd: int | None) -> None:
    data = record.to_json().encode()
    if fd is None:
        store.write_text(data.decode(), store.LOCK_FILE)
        return
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    os.fsync(fd)


def _new_record() -> LockRecord:
    now = time.time()
    return LockRecord(socket.gethostname(), os.getpid(), now, int(now), secrets.token_hex(8))


def acquire(
    store: SweepStore, *, ttl: float = DEFAULT_TTL, settle: float = DEFAULT_SETTLE
) -> DriverLock:
    """Take the sweep's lock or raise LockHeld naming the driver that has it."""
    store.fs.create_dir(store.root, recursive=True)
    if isinstance(store.fs, pafs.LocalFileSystem):
        return _acquire_local(store, ttl)
    return _acquire_remote(store, ttl, settle)


def _acquire_local(store: SweepStore, ttl: float) -> DriverLock:
    import fcntl

    path = store.path(store.LOCK_FILE)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(store, _wait_for_record(store)) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder released (unlinked) it between our open and lock: again
    record = _new_record()
    _write(store, record, fd)
    return DriverLock(store, record, fd, ttl)


def _wait_for_record(store: SweepStore, timeout: float = 2.0) -> LockRecord | None:
    """The holder's record; it may be a moment away if the holder has only just locked."""
    deadline = time.monotonic() + timeout
    while (record := read_record(store)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return record


def _acquire_remote(store: SweepStore, ttl: float, settle: float) -> DriverLock:
    for _ in range(UNREADABLE_RETRIES + 1):
        existing = read_record(store)
        if existing is not None and existing.alive(ttl):
            raise LockHeld(store, existing)
        record = _new_record()
        _write(store, record, None)
        time.sleep(settle)  # let a contender's write land before we read back
        back = read_record(store)
        if back is not None:
            if back.token != record.token:
                raise LockHeld(store, back)
            return DriverLock(store, record, None, ttl)
        # Unreadable: contenders' writes interleaved. Each tries again, at its own moment.
        time.sleep(random.uniform(0, settle))
    raise LockHeld(store, None)
