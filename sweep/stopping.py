"""Ctrl-C and SIGTERM stop a sweep gracefully; a second one forces the stop.

Ray Tune stops an experiment gracefully when its own SIGUSR1 (or SIGINT) handler, installed by
`tuner.fit()`, fires: the loop ends, the experiment state is saved with every trial's last
checkpoint, and `fit()` returns normally, with the interrupted trials neither finished nor failed.
`Tuner.restore` later continues each of them from that checkpoint.

`graceful_stop()` installs one handler for SIGINT and SIGTERM (Tune's own SIGINT handler is turned
off with TUNE_DISABLE_SIGINT_HANDLER, so both signals take the same path):

- first signal, inside `fit()`: the request is recorded, and `sweep.progress.StopCallback`, which
  Tune calls in its loop (so after Tune's handler is in place), raises SIGUSR1 to hand it to Tune;
- first signal outside `fit()` (starting Ray, logging to MLflow): nothing to save, so
  `SweepInterrupted` is raised at once;
- a second signal: KeyboardInterrupt at once (a forced stop: the last experiment snapshot, at most
  a few seconds old, is what resume starts from).

State lives at module level, not in the callback, because Tune pickles callbacks with the
experiment and a restored experiment brings back the pickled copy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number


class SweepInterrupted(Exception):
    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class _State:
    signum: int | None = None  # the first stop signal received
    handed_to_tune = False
    in_fit = False


STATE = _State()


def _handler(signum, frame) -> None:
    if STATE.signum is not None:
        print("\nsecond stop signal: stopping now", file=sys.stderr, flush=True)
        raise KeyboardInterrupt
    STATE.signum = signum
    if not STATE.in_fit:
        raise SweepInterrupted(signum)
    print(
        f"\n{signal.Signals(signum).name}: stopping after saving every trial's state "
        "(resume with `sweep resume NAME`); send it again to stop at once",
        file=sys.stderr,
        flush=True,
    )


def install() -> None:
    """(Re)install the handlers: `ray.init()` replaces the SIGTERM handler with its own exit."""
    with contextlib.suppress(ValueError):  # not the main thread: Ray's and Python's defaults
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _handler)


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Handle SIGINT/SIGTERM as above for the duration (main thread only; a no-op elsewhere)."""
    try:
        old = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (e.g. a Jobs-API entrypoint's helper thread)
        yield
        return
    previous_tune = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    STATE.signum, STATE.handed_to_tune, STATE.in_fit = None, False, False
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if previous_tune is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous_tune


@contextlib.contextmanager
def fitting() -> Iterator[None]:
    """Around `tuner.fit()`: a stop request is handed to Tune instead of raised."""
    if STATE.signum is not None:
        raise SweepInterrupted(STATE.signum)
    STATE.in_fit = True
    try:
        yield
    finally:
        STATE.in_fit = False
    if STATE.signum is not None:
        raise SweepInterrupted(STATE.signum)


def hand_to_tune() -> None:
    """Called in Tune's loop (sweep.progress.StopCallback): pass a recorded stop request on to
    Tune's graceful stop, its SIGUSR1 handler, which is in place by then."""
    if STATE.signum is not None and not STATE.handed_to_tune and STATE.in_fit:
        STATE.handed_to_tune = True
        signal.raise_signal(signal.SIGUSR1)
