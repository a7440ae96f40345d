"""The worker process: runs the outbox relay and every registered consumer.

``flask mercato worker`` builds a :class:`Worker` from the app's consumers. The relay runs
in a thread with its own broker connection; the consumers run on kombu's ConsumerMixin
in the main thread. SIGTERM and SIGINT stop both after the message in hand.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from kombu import Connection
from kombu.messaging import Consumer
from kombu.mixins import ConsumerMixin
from kombu.transport.base import StdChannel
from sqlalchemy.orm import Session

from cmw.events.consumer import EventConsumer
from cmw.events.relay import OutboxRelay

log = logging.getLogger(__name__)
#: deliveries read ahead at most before applying what is in hand, and how long to wait for one
GATHER_LIMIT = 200
GATHER_WAIT = 0.001


class Worker(ConsumerMixin):
    """Consumers on one connection, plus the outbox relay thread."""

    def __init__(
        self,
        connection_factory: Callable[[], Connection],
        session_factory: Callable[[], Session],
        consumers: Sequence[EventConsumer],
        *,
        relay_batch_size: int = 100,
        relay_poll_seconds: float = 0.5,
        prefetch_count: int = 10,
        periodic: Sequence[Callable[[], object]] = (),
        periodic_seconds: float = 30.0,
        loops: Sequence[Callable[[threading.Event], None]] = (),
    ) -> None:
        self.connection = connection_factory()
        self.session_factory = session_factory
        self.consumers = list(consumers)
        self.prefetch_count = prefetch_count
        self.stop_event = threading.Event()
        self.relay = OutboxRelay(
            session_factory,
            connection_factory,
            queues=[c.queue() for c in self.consumers],
            batch_size=relay_batch_size,
        )
        self.relay_poll_seconds = relay_poll_seconds
        self.periodic = list(periodic)
        self.periodic_seconds = periodic_seconds
        #: long-running loops (the deployer engine), each on its own thread until stopped
        self.loops = list(loops)
        self._loop_threads: list[threading.Thread] = []
        self._live: Connection | None = None
        self._batching = False
        self._inbox: collections.deque[tuple[EventConsumer, Any, Any]] = collections.deque()
        self._relay_thread: threading.Thread | None = None
        self._periodic_thread: threading.Thread | None = None

    def get_consumers(self, consumer_cls: type[Consumer], channel: StdChannel) -> list[Consumer]:
        return [
            consumer_cls(
                queues=[c.queue()],
                callbacks=[functools.partial(self._on_message, c)],
                accept=list(c.accept),
                prefetch_count=self.prefetch_count,
            )
            for c in self.consumers
        ]

    def on_consume_ready(
        self, connection: Connection, channel: StdChannel, consumers: list[Consumer]
    ) -> None:
        # ConsumerMixin consumes on a clone of self.connection: that one carries the heartbeats
        self._live = connection
        # RabbitMQ only: the embedded transport polls files, and reading ahead would poll more
        self._batching = connection.transport.driver_type == "amqp" and any(
            c.batch_size > 1 for c in self.consumers
        )

    def _heartbeat(self) -> None:
        if self._live is not None:
            self._live.heartbeat_check()

    def on_iteration(self) -> None:
        # ConsumerMixin wakes at least once a second, and after each delivery; keep the
        # AMQP heartbeat going, busy or idle, so the broker does not drop the worker.
        self._heartbeat()
        # Messages are applied here, between two reads of the connection, never inside
        # one: applying may talk to the broker (a retry queue declared, a publish waiting
        # for its confirm), and a wait inside a delivery callback would hand the next
        # deliveries to callbacks nested in it, without end, and the worker would never
        # get back to its loop to stop.
        self._gather()
        while self._inbox and not self.should_stop:
            consumer, body, message = self._inbox.popleft()
            if not self._ours(message):
                continue
            batch = [(body, message)]
            if consumer.batch_size > 1:
                # the same consumer's deliveries waiting behind it, in their order
                others: collections.deque[tuple[EventConsumer, Any, Any]] = collections.deque()
                while self._inbox and len(batch) < consumer.batch_size:
                    item = self._inbox.popleft()
                    if item[0] is not consumer:
                        others.append(item)
                    elif self._ours(item[2]):
                        batch.append((item[1], item[2]))
                self._inbox.extendleft(reversed(others))
            consumer.apply_many(self.session_factory, batch)
            self._heartbeat()

    @staticmethod
    def _ours(message: Any) -> bool:
        if getattr(message.channel, "connection", None) is None:
            # A delivery of a connection that was lost is not ours any more: the broker
            # gives it again (it was not acknowledged). Acknowledged on its dead
            # channel it would fail and make the mixin reconnect, again and again,
            # each time with the newer deliveries behind it, and nothing got through.
            log.info("worker: a delivery of the lost connection dropped; it comes again")
            return False
        return True

    def _gather(self) -> None:
        """Read the deliveries already waiting on the connection, without waiting for more
        (a millisecond at most), so a consumer that batches finds its messages together."""
        if self._live is None or not self._batching:
            return
        for _ in range(GATHER_LIMIT):
            try:
                self._live.drain_events(timeout=GATHER_WAIT)
            except TimeoutError:
                return

    def _on_message(self, consumer: EventConsumer, body: Any, message: Any) -> None:
        # only noted: applied by on_iteration (unacknowledged ones are redelivered after a stop)
        self._inbox.append((consumer, body, message))

    def start_relay(self) -> None:
        self._relay_thread = threading.Thread(
            target=self.relay.run,
            args=(self.stop_event, self.relay_poll_seconds),
            name="outbox-relay",
            daemon=True,
        )
        self._relay_thread.start()

    def _run_periodic(self) -> None:
        """Run the periodic jobs now and then every ``periodic_seconds`` until stopped.

        Safe with several workers: the jobs claim their items with SKIP LOCKED."""
        while not self.stop_event.is_set():
            for job in self.periodic:
                try:
                    job()
                except Exception:
                    log.exception("periodic job %s failed; retried at the next tick", job)
            self.stop_event.wait(self.periodic_seconds)

    def start_periodic(self) -> None:
        if self.periodic:
            self._periodic_thread = threading.Thread(
                target=self._run_periodic, name="periodic-jobs", daemon=True
            )
            self._periodic_thread.start()

    def start_loops(self) -> None:
        for n, loop in enumerate(self.loops):
            thread = threading.Thread(target=loop, args=(self.stop_event,), name=f"loop-{n}", daemon=True)
            thread.start()
            self._loop_threads.append(thread)

    def stop(self) -> None:
        self.should_stop = True
        self.stop_event.set()

    def run_forever(self) -> None:
        """Run relay and consumers until :meth:`stop` is called."""
        self.start_relay()
        self.start_periodic()
        self.start_loops()
        try:
            if self.consumers:
                self.run()
            else:
                self.stop_event.wait()
        finally:
            self.stop()
            for thread in (self._relay_thread, self._periodic_thread, *self._loop_threads):
                if thread is not None:
                    thread.join(timeout=10)
            self.connection.release()
