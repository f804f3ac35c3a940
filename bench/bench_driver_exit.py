"""What a driver leaves behind, measured side by side: the sweep's embedded Ray against a bare
`ray.init()` (the reference, as `sweep run` started it before).

1. Listening sockets of the driver's process tree once Ray is up: how many, and how many on an
   address other than the loopback one.
2. SIGKILL of the driver: seconds until every process it had started is gone (Ray's agents
   notice their raylet is gone only after about a minute; the sweep's guard stops them).

Each case runs in a fresh driver process; Ray's token auth is left at the product default.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
DRIVERS = {
    "sweep (_init_ray)": "from sweep.runner import _init_ray; _init_ray(None)",
    "bare ray.init()": "import ray; ray.init(include_dashboard=False, log_to_driver=False)",
}


def _start(code: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("RAY_AUTH_MODE", None)
    script = f"{code}\nimport time\nprint('up', flush=True)\ntime.sleep(600)"
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "up"
    time.sleep(2)  # the agents finish binding
    return proc


def _ray_processes(pid: int) -> list[psutil.Process]:
    kids = psutil.Process(pid).children(recursive=True)
    return [k for k in kids if "sweep.guard" not in " ".join(k.cmdline())]


def _listeners(procs: list[psutil.Process]) -> tuple[int, int]:
    total = exposed = 0
    for proc in procs:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                total += 1
                exposed += conn.laddr.ip not in LOOPBACK
    return total, exposed


def _gone_after_sigkill(proc: subprocess.Popen, procs: list[psutil.Process]) -> float:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    start = time.monotonic()
    while time.monotonic() - start < 120:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.2)
    for p in alive:
        p.kill()
    return time.monotonic() - start


def main() -> None:
    for name, code in DRIVERS.items():
        proc = _start(code)
        procs = [psutil.Process(proc.pid), *_ray_processes(proc.pid)]
        total, exposed = _listeners(procs)
        gone = _gone_after_sigkill(proc, procs[1:])
        print(
            f"{name:18}: {total} listeners, {exposed} beyond loopback; "
            f"{len(procs) - 1} processes gone {gone:.1f} s after SIGKILL of the driver"
        )


if __name__ == "__main__":
    main()
