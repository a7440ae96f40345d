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
in four, this one in none.

Requests in hand are not the whole story: a worker that starts late (at boot, or after a
restart) finds every kept-alive connection already with the others, and keeps none. So the
workers also publish how many connections each holds, in a table shared through the
master (:data:`SLOTS` slots, one per worker, given out by :func:`pre_fork`). A worker
holding more connections than another also holds off accepting, and one holding at least
two more than another closes a kept-alive connection (``Connection: close`` on a
response, once per :data:`REBALANCE_SECONDS` at most): its client reconnects, and the new
connection goes to the worker with fewer. It also closes a kept-alive connection after
:data:`KEEPALIVE_REQUESTS` requests, as nginx's ``keepalive_requests`` does, with
``Connection: close`` on the last response so the client reconnects cleanly; the new
connection then goes to a worker with a free thread.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

__all__ = ["child_exit", "on_starting", "pre_fork", "threads", "worker_class"]

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
#: a worker with this many more connections than another closes one ...
CROWDED = 2
#: ... at most once in this many seconds (if the other does not take it, little is lost)
REBALANCE_SECONDS = 0.25

#: workers whose connection counts the shared table holds (more workers: the rest are not
#: balanced by connections, only by requests in hand)
SLOTS = 64
#: per slot, the worker's pid (0: free) and its open connections; made in the master at
#: import, so every worker forked from it shares the same pages
_SLOT = struct.Struct("qq")
_table = mmap.mmap(-1, SLOTS * _SLOT.size)
#: the slots the master has given to running workers (the master's copy is the one used)
_taken: set[int] = set()


class Worker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker that leaves new connections to a less busy worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_hand = 0  # requests submitted to the thread pool and not finished
        self.held_since: float | None = None
        self.slot: int | None = None  # given by pre_fork, in the master
        self.rebalanced_at = 0.0

    def init_process(self) -> None:
        self._publish()
        super().init_process()

    def _publish(self) -> None:
        # self.pid is this worker's own pid once forked (the arbiter sets it in the child)
        if self.slot is not None:
            _SLOT.pack_into(_table, self.slot * _SLOT.size, self.pid, self.nr_conns)

    def _fewest_elsewhere(self) -> int | None:
        """The fewest connections another running worker holds (None: no other)."""
        if self.slot is None:
            return None
        fewest = None
        for pid, conns in _SLOT.iter_unpack(_table):
            if pid and pid != self.pid and (fewest is None or conns < fewest):
                fewest = conns
        return fewest

    def _busy(self) -> bool:
        if self.in_hand >= BUSY:
            return True
        fewest = self._fewest_elsewhere()
        return fewest is not None and self.nr_conns > fewest

    def enqueue_req(self, conn: Any) -> None:
        self.in_hand += 1
        super().enqueue_req(conn)
        self._publish()
        if self._accepting and self._busy():
            self.held_since = time.monotonic()
            super().set_accept_enabled(False)

    def finish_request(self, conn: Any, fs: Any) -> None:
        self.in_hand -= 1
        super().finish_request(conn, fs)

    def set_accept_enabled(self, enabled: bool) -> None:
        # gunicorn's loop asks to accept again on every turn while it could
        if enabled and self.alive and self.held_since is not None:
            if time.monotonic() - self.held_since < HOLD_SECONDS and self._busy():
                return
            self.held_since = None
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # while holding off, wake when the hold ends (gunicorn's loop waits up to a second);
        # a hold that has ended without accepting again (stopping, or at the connection
        # limit) is forgotten, so the loop never turns without waiting
        self._publish()
        if self.held_since is not None:
            remaining = self.held_since + HOLD_SECONDS - time.monotonic()
            if self.alive and not self._accepting and remaining > 0:
                timeout = min(timeout, remaining)
            else:
                self.held_since = None
        super().wait_for_and_dispatch_events(timeout)

    def handle_request(self, req: Any, conn: Any) -> Any:
        if req.req_number >= KEEPALIVE_REQUESTS or self._crowded():
            req.force_close()
        return super().handle_request(req, conn)

    def _crowded(self) -> bool:
        """Whether to close this connection so that a worker with fewer takes its client."""
        fewest = self._fewest_elsewhere()
        now = time.monotonic()
        if fewest is None or self.nr_conns < fewest + CROWDED or now - self.rebalanced_at < REBALANCE_SECONDS:
            return False
        self.rebalanced_at = now
        return True


def pre_fork(server: Any, worker: Any) -> None:
    """A free slot of the shared table for the worker about to start (in the master)."""
    free = next((n for n in range(SLOTS) if n not in _taken), None)
    if free is not None and isinstance(worker, Worker):
        _taken.add(free)
        worker.slot = free
        _SLOT.pack_into(_table, free * _SLOT.size, 0, 0)


def on_starting(server: Any) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """A worker that exits frees its slot, and takes its live gauges with it (its counters
    stay counted)."""
    slot = getattr(worker, "slot", None)
    if slot is not None:
        _SLOT.pack_into(_table, slot * _SLOT.size, 0, 0)
        _taken.discard(slot)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
