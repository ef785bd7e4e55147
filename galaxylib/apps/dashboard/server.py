"""The voila server's side of the dashboard: a ceiling on live kernels, and the port check.

Every page load starts an ipykernel of about a gigabyte (galaxylib, LiteRT, TensorFlow for
Grad-CAM). Three things keep a demo left open to visitors within its memory, all set in
voila.json and documented in docs/dashboard.md:

- a page closed by its visitor shuts its kernel down (voila's own ``beforeunload`` request to
  ``/voila/api/shutdown/<id>``, which the page's ``kernel_release.js`` makes pass the XSRF check);
- jupyter_server's culler shuts down the kernels left without a page (a crashed tab, a killed
  browser, a lost network): ``MappingKernelManager.cull_idle_timeout`` and ``cull_interval``;
- :class:`DashboardKernelManager` refuses a kernel past ``max_kernels`` live ones, and the visitor
  reads "the demo is busy" instead of a page that hangs or a server that runs out of memory.

``python -m galaxylib.apps.dashboard.server check-port HOST PORT`` is dashboard.sh's port check.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado.web import HTTPError
from traitlets import Integer

BUSY_STATUS = 503  # Service Unavailable: come back later


def visitors_text(n: int) -> str:
    return f"{n} visitor{'' if n == 1 else 's'}"


def busy_message(visitors: int) -> str:
    """What a visitor past the ceiling reads (voila's error page shows it as its heading)."""
    return f"The demo is busy: {visitors_text(visitors)} at once; try again in a minute."


class DashboardKernelManager(AsyncMappingKernelManager):
    """jupyter_server's kernel manager with a ceiling on live kernels (voila and jupyter_server
    have none): one kernel per open page, so the ceiling is the number of visitors at once.

    Set as ``VoilaConfiguration.multi_kernel_manager_class`` in voila.json; the culler settings
    (``MappingKernelManager.cull_*``) apply to it unchanged."""

    max_kernels = Integer(
        8,
        config=True,
        help="""Most kernels alive at once, that is visitors at once (each kernel holds up to about
        1 GB). A page load past it gets HTTP 503 and a one-line message. 0: no ceiling.""",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._starting: set[str] = set()  # kernels being started: they count before they are in the table
        ceiling = (
            f"at most {visitors_text(self.max_kernels)} at once" if self.max_kernels > 0 else "no ceiling on visitors"
        )
        culling = (
            f"kernels without a page are shut down after {self.cull_idle_timeout} s idle"
            if self.cull_idle_timeout > 0
            else "kernels without a page are never culled"
        )
        self.log.info("Dashboard: %s (max_kernels), %s (cull_idle_timeout).", ceiling, culling)

    def live_kernels(self) -> int:
        """Kernels alive or being started: what the ceiling counts."""
        return len(self._starting.union(self._kernels))

    async def start_kernel(self, *args: Any, kernel_id: str | None = None, **kwargs: Any) -> str:
        """Start a kernel unless the ceiling is reached; then raise the 503 the visitor sees.

        A kernel counts from the moment it is asked for, so visitors arriving together cannot
        overshoot the ceiling (the check and the count happen with no ``await`` between)."""
        if kernel_id is not None and kernel_id in self:  # an existing kernel: nothing new starts
            return await super().start_kernel(*args, kernel_id=kernel_id, **kwargs)
        visitors = self.live_kernels()
        if self.max_kernels > 0 and visitors >= self.max_kernels:
            self.log.warning("Dashboard busy: refused a visitor, %s already (max_kernels).", visitors_text(visitors))
            raise HTTPError(BUSY_STATUS, reason=busy_message(visitors))
        kernel_id = kernel_id or self.new_kernel_id()
        self._starting.add(kernel_id)
        try:
            return await super().start_kernel(*args, kernel_id=kernel_id, **kwargs)
        finally:
            self._starting.discard(kernel_id)


# ------------------------------------------------------------------ the port check


def port_problem(host: str, port: int) -> str | None:
    """Why voila could not listen on ``host:port``, as one line, or None when it can.

    Binds the way voila does (tornado's ``bind_sockets``: every address of the host, with
    SO_REUSEADDR) and lets go at once, so a port free for this check is free for voila."""
    from tornado.netutil import bind_sockets

    try:
        sockets = bind_sockets(port, address=host)
    except socket.gaierror as exc:
        return f"cannot listen on {host}: no such address ({exc.strerror}); check --host"
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"port {port} is already in use on {host}; choose another with --port N"
        if exc.errno == errno.EACCES:
            return f"no permission to listen on port {port} on {host}; choose a port above 1023 with --port N"
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"cannot listen on {host}: not an address of this machine; check --host"
        return f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another with --port N"
    for sock in sockets:
        sock.close()
    return None


def main(argv: list[str]) -> int:
    """``check-port HOST PORT``: exit 0 when voila can listen there, else print why and exit 2."""
    if len(argv) != 3 or argv[0] != "check-port":
        print("usage: python -m galaxylib.apps.dashboard.server check-port HOST PORT", file=sys.stderr)
        return 2
    problem = port_problem(argv[1], int(argv[2]))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
