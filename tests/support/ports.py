"""Free TCP ports on 127.0.0.1 for the services a test starts.

The OS picks an unused port for a socket bound to port 0; once that socket is closed it may pick
the same port again, so two back-to-back calls can return one port twice. That happened to a
`ray start` that was given six ports (CI: "dashboard_agent_http is trying to use a port number
43295 that is used by other components"). `free_port` therefore never returns a port it has
returned before in this process.
"""

from __future__ import annotations

import socket

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now and that this process has not been given before."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("the OS kept offering ports this test run already uses")
