"""A gunicorn sync worker that is woken alone when a connection arrives.

Stock sync workers all ``select()`` on the shared listening socket, so each new
connection wakes every idle worker; all but one find nothing to accept. With
4 workers on 2 cores those wake-ups cost ~1 ms per request and slow the
forward pass they preempt (docs/performance.md). ``EPOLLEXCLUSIVE`` (Linux >= 4.5)
makes the kernel wake one waiter, as nginx does. Everything else is SyncWorker.
"""

from __future__ import annotations

import os
import select

from gunicorn.workers.sync import StopWaiting, SyncWorker


class ExclusiveAcceptWorker(SyncWorker):
    _epoll: select.epoll | None = None

    def _register(self) -> select.epoll:
        epoll = select.epoll()
        for listener in self.sockets:
            try:
                epoll.register(listener.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
            except OSError:  # a kernel before 4.5: wake like the stock worker
                epoll.register(listener.fileno(), select.EPOLLIN)
        epoll.register(self.PIPE[0], select.EPOLLIN)  # signals wake the worker through this pipe
        return epoll

    def wait(self, timeout):
        if self._epoll is None:
            self._epoll = self._register()
        self.notify()
        try:
            events = self._epoll.poll(timeout)
        except OSError as exc:  # EBADF after the listeners were closed at shutdown
            raise StopWaiting from exc
        ready = []
        for fd, _ in events:
            if fd == self.PIPE[0]:
                os.read(self.PIPE[0], 1)
            else:
                ready.extend(s for s in self.sockets if s.fileno() == fd)
        return ready
