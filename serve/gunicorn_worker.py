"""The API's gunicorn worker: threads for slow clients, one wake-up per connection, JSON errors.

- **Threads** (gunicorn's gthread): a request occupies its thread while its body arrives. With
  sync workers two clients trickling uploads stopped a 2-worker server; here a slow body holds
  one thread, serve/body_deadline.py bounds how long it may take, and the model still runs one
  batch at a time per process (the Predictor's lock).
- **Woken alone.** Every worker waits on the shared listening socket, so each new connection
  would wake every idle worker; all but one find nothing to accept. With 4 workers on 2 cores
  those wake-ups cost ~1 ms per request and slow the forward pass they preempt
  (docs/performance.md). ``EPOLLEXCLUSIVE`` (Linux >= 4.5) makes the kernel wake one, as nginx
  does.
- **JSON errors.** gunicorn answers a request it cannot parse (both Content-Length and
  Transfer-Encoding, a bad request line...) itself, with an HTML page; this worker writes the
  API's ``{"error": {"code", "message"}}`` body instead.
"""

from __future__ import annotations

import json
import select
import selectors

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own error answer, as the JSON body every other answer of the API has."""
    body = json.dumps({"error": {"code": reason.lower().replace(" ", "_"), "message": mesg or reason}}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    util.write_nonblock(sock, head + body)


class ThreadedJsonWorker(ThreadWorker):
    def init_process(self) -> None:
        util.write_error = write_json_error  # gunicorn calls util.write_error for its own error answers
        super().init_process()

    def set_accept_enabled(self, enabled: bool) -> None:
        was_accepting = self._accepting
        super().set_accept_enabled(enabled)
        epoll = getattr(self.poller, "_selector", None)  # selectors.EpollSelector's select.epoll
        if not enabled or was_accepting or not isinstance(self.poller, selectors.EpollSelector):
            return
        if not hasattr(select, "EPOLLEXCLUSIVE") or not isinstance(epoll, select.epoll):
            return
        for listener in self.sockets:
            # The flag can only be given when a descriptor is added: add it again, with the flag.
            # The selector's own table still maps the descriptor to gunicorn's accept callback.
            epoll.unregister(listener.fileno())
            try:
                epoll.register(listener.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
            except OSError:  # a kernel before 4.5: wake like the stock worker
                epoll.register(listener.fileno(), select.EPOLLIN)
