"""No orphaned Ray processes, however the driver ends.

`ray.init()` starts its processes (GCS, raylet, dashboard and runtime-env agents, workers) as the
driver's children. A clean exit or a caught signal runs `ray.shutdown()`, which stops them all.
A SIGKILLed driver runs nothing: the GCS and raylet follow it at once (Ray ties their fate to the
driver's), but the two agents only notice their raylet is gone after about 60 s, holding their
ports meanwhile.

`start_guard()` spawns a small process in its own session (so the terminal's Ctrl-C and a
`kill` of the driver's process group do not reach it) that reads the driver's end of a pipe. The
pipe closes when the driver's process ends, however it ends; the guard then stops every process
it was told about (the driver's descendants, sent again by `watch_descendants()` as Ray starts
trial workers) that is still the same process (checked by start time, so a recycled PID is left
alone), and their descendants: SIGTERM, then SIGKILL after `grace` seconds.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import psutil


def _descendants(pids: list[tuple[int, float]]) -> list[psutil.Process]:
    procs = []
    for pid, started in pids:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) > 0.01:
                continue  # the PID was recycled: not ours
            procs += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
    return procs


def stop_processes(pids: list[tuple[int, float]], grace: float = 3.0) -> None:
    """SIGTERM the processes (pid, start time) still running and their descendants, then KILL."""
    procs = _descendants(pids)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


class Guard:
    """The driver's side of the guard: tell it about processes to stop once the driver is gone."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "sweep.guard"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        self._known: set[int] = {self._process.pid}
        self._last = 0.0

    def watch(self, pids: list[int]) -> None:
        """Add processes; the pipe stays open (never closed here) until this process ends."""
        lines = []
        for pid in set(pids) - self._known:
            try:
                lines.append(f"{pid} {psutil.Process(pid).create_time()!r}")
            except psutil.Error:
                continue
            self._known.add(pid)
        if lines:
            with contextlib.suppress(OSError):  # the guard is gone: nothing more to do
                self._process.stdin.write("\n".join(lines) + "\n")
                self._process.stdin.flush()

    def watch_descendants(self, every: float = 2.0) -> None:
        """Add this process's descendants (Ray starts trial workers as the sweep goes)."""
        now = time.monotonic()
        if now - self._last < every:
            return
        self._last = now
        self.watch([p.pid for p in psutil.Process().children(recursive=True)])


_GUARD: Guard | None = None  # module-level: its pipe must stay open as long as this process lives


def start_guard() -> None:
    """Guard this process's descendants from now on (idempotent)."""
    global _GUARD
    if _GUARD is None:
        _GUARD = Guard()
    _GUARD.watch_descendants(every=0)


def watch_descendants() -> None:
    """Tell a started guard about new descendants (at most every 2 s; a no-op without one)."""
    if _GUARD is not None:
        _GUARD.watch_descendants()


def _main() -> None:
    pids = []
    for line in sys.stdin:  # ends at EOF: the driver is gone
        pid, started = line.split()
        pids.append((int(pid), float(started)))
    time.sleep(0.5)  # a clean shutdown may still be stopping them: let it finish first
    stop_processes(pids)


if __name__ == "__main__":
    _main()
