"""gunicorn settings for the web process, shared by ``flask mercato serve`` and the benchmarks:
``gunicorn -c python:cmw.webserver 'app:create_app()'`` (options given after ``-c``
override these; ``gunicorn.conf.py`` in the repository root reads them, for a gunicorn
started there without ``-c``).

Prometheus's multiprocess bookkeeping when ``PROMETHEUS_MULTIPROC_DIR`` is set (see
cmw/monitoring/metrics.py): the directory is created at start, and a worker's live gauges
leave with it.

Why a worker class of our own: gunicorn's workers share one listening socket, and the
worker whose main thread wakes first takes whatever connections are waiting. Clients that
open their connections at once and keep them alive (an API client's pool, a proxy, a load
generator) then often all land on one worker, and stay there: the other worker idles and
the server runs on one core at half its throughput. Measured on the product pages at 20
kept-alive connections: 317 requests/s with one worker holding every connection, 604/s
with both busy.

:class:`Worker` leaves new connections to a less busy worker: while it has
:data:`BUSY` requests in hand it stops accepting, for :data:`HOLD_SECONDS` at most (its
loop wakes when the hold ends), and the other worker takes what arrives meanwhile.
Measured on the same pages over nine runs each: gunicorn's own worker left one worker idle
in four, this one in none. It also closes a kept-alive connection after
:data:`KEEPALIVE_REQUESTS` requests, as nginx's ``keepalive_requests`` does, with
``Connection: close`` on the last response so the client reconnects cleanly; the new
connection then goes to a worker with a free thread.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

__all__ = ["child_exit", "on_starting", "threads", "worker_class"]

worker_class = "cmw.webserver.Worker"
threads = 4

#: requests served on one kept-alive connection before it is closed (nginx's default)
KEEPALIVE_REQUESTS = 1000
#: a worker with this many requests in hand takes no new connection, so that another
#: worker with less to do takes it ...
BUSY = 2
#: ... unless it has held off for this long (seconds): under overload every worker is busy,
#: and a new client must still be let in
HOLD_SECONDS = 0.02


class Worker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker that leaves new connections to a less busy worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_hand = 0  # requests submitted to the thread pool and not finished
        self.held_since: float | None = None

    def enqueue_req(self, conn: Any) -> None:
        self.in_hand += 1
        super().enqueue_req(conn)
        if self.in_hand >= BUSY and self._accepting:
            self.held_since = time.monotonic()
            super().set_accept_enabled(False)

    def finish_request(self, conn: Any, fs: Any) -> None:
        self.in_hand -= 1
        super().finish_request(conn, fs)

    def set_accept_enabled(self, enabled: bool) -> None:
        # gunicorn's loop asks to accept again on every turn while it could
        if enabled and self.alive and self.held_since is not None:
            if self.in_hand >= BUSY and time.monotonic() - self.held_since < HOLD_SECONDS:
                return
            self.held_since = None
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # while holding off, wake when the hold ends (gunicorn's loop waits up to a second);
        # a hold that has ended without accepting again (stopping, or at the connection
        # limit) is forgotten, so the loop never turns without waiting
        if self.held_since is not None:
            remaining = self.held_since + HOLD_SECONDS - time.monotonic()
            if self.alive and not self._accepting and remaining > 0:
                timeout = min(timeout, remaining)
            else:
                self.held_since = None
        super().wait_for_and_dispatch_events(timeout)

    def handle_request(self, req: Any, conn: Any) -> Any:
        if req.req_number >= KEEPALIVE_REQUESTS:
            req.force_close()
        return super().handle_request(req, conn)


def on_starting(server: Any) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """A worker that exits takes its live gauges with it; its counters stay counted."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
