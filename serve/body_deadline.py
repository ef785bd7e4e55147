"""A request body must arrive within BODY_TIMEOUT_S, or the request ends with 408.

Why: under gunicorn a worker thread reads the body while the app runs; a client that trickles
its upload would hold that thread for as long as it likes. A per-read socket timeout does not
bound this (a byte every few seconds resets it), so a watchdog half-closes the connection's
reading side at the deadline: the blocked read returns at once, and the app answers a JSON 408
(``werkzeug.exceptions.RequestTimeout``) on the still-open writing side. The deadline is
withdrawn as soon as the app returns, before the response is written.

One watchdog thread per process looks at the deadlines once a second (a deadline is kept to
within that second): a request only pushes onto a heap, where a timer thread per request cost
~0.25 ms, a twentieth of a forward pass.

Only under gunicorn (it hands the app its socket as ``gunicorn.socket``); the Werkzeug test
client and development server have no socket to cut, and their bodies are read at once.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import RequestTimeout

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _DeadlineInput:
    """``wsgi.input``, turning a read cut short by the deadline into a 408."""

    def __init__(self, stream: Any, expired: threading.Event, seconds: float):
        self._stream, self._expired, self._seconds = stream, expired, seconds

    def _checked(self, data: Any) -> Any:
        if self._expired.is_set():
            raise RequestTimeout(f"the request body did not arrive within {self._seconds:g} s")
        return data

    def read(self, *args: Any) -> bytes:
        return self._checked(self._stream.read(*args))

    def readline(self, *args: Any) -> bytes:
        return self._checked(self._stream.readline(*args))

    def readlines(self, *args: Any) -> list[bytes]:
        return self._checked(self._stream.readlines(*args))

    def __iter__(self):
        for line in self._stream:
            yield self._checked(line)
        self._checked(None)


class _Watchdog:
    """Deadlines of the requests in flight in this process; cuts the overdue ones' reading side."""

    TICK_S = 1.0

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, socket.socket, threading.Event]] = []
        self._withdrawn: set[int] = set()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, seconds: float, expired: threading.Event) -> int:
        ticket = next(self._ids)
        with self._lock:
            heapq.heappush(self._heap, (time.monotonic() + seconds, ticket, sock, expired))
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(target=self._run, name="body-deadline", daemon=True)
                self._thread.start()
        return ticket

    def withdraw(self, ticket: int) -> None:
        with self._lock:
            self._withdrawn.add(ticket)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK_S)
            now, overdue = time.monotonic(), []
            with self._lock:
                while self._heap and (self._heap[0][1] in self._withdrawn or self._heap[0][0] <= now):
                    _, ticket, sock, expired = heapq.heappop(self._heap)
                    if ticket in self._withdrawn:
                        self._withdrawn.discard(ticket)
                    else:
                        overdue.append((sock, expired))
            for sock, expired in overdue:
                expired.set()
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:  # the client already went away
                    pass


_WATCHDOG = _Watchdog()


class BodyDeadline:
    """WSGI middleware: at most ``seconds`` from the start of a request to the end of its body."""

    def __init__(self, app: WSGIApp, seconds: float):
        self.app, self.seconds = app, seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        has_body = (
            environ.get("CONTENT_LENGTH", "") not in ("", "0")
            or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        )
        if sock is None or self.seconds <= 0 or not has_body:
            return self.app(environ, start_response)
        expired = threading.Event()
        environ["wsgi.input"] = _DeadlineInput(environ["wsgi.input"], expired, self.seconds)
        ticket = _WATCHDOG.watch(sock, self.seconds, expired)
        try:
            return self.app(environ, start_response)
        finally:
            _WATCHDOG.withdraw(ticket)
