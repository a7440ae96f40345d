"""The outbox relay: publishes committed outbox rows to the topic exchange, in order.

A row is marked published only after the broker confirmed it (publisher confirms on
RabbitMQ), so a crash or a lost connection at any point means the row is sent again:
delivery is at least once, and consumers drop the duplicates by message id. A batch is
published whole, then its confirms awaited: if the broker refuses a message (a nack) or
does not confirm it in time, the rows after it went out already, and it arrives again
after them. Only then are events out of order.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence

import amqp
import sqlalchemy as sa
from kombu import Connection, Producer, Queue
from sqlalchemy.orm import Session

from cmw.db import utcnow
from cmw.events.models import OutboxEvent
from cmw.events.topology import DEAD_LETTER_QUEUE, EVENTS

log = logging.getLogger(__name__)

ConnectionFactory = Callable[[], Connection]
#: PostgreSQL advisory lock key held by the relay that is publishing (any stable number)
RELAY_LOCK = 0x6D65726361746F
#: how long a batch waits for the broker's confirms before its unconfirmed rows are retried
CONFIRM_TIMEOUT = 10.0


class Unconfirmed(Exception):
    """The broker did not confirm every message of the batch (a nack, or no answer in time)."""


class _Confirms:
    """Publisher confirms of one AMQP channel, awaited once per batch instead of once per
    message: a batch of 100 events costs one wait for the broker, not 100."""

    def __init__(self, channel: amqp.Channel) -> None:
        self.channel = channel
        self.sent = 0
        self.pending: set[int] = set()
        self.nacked: set[int] = set()
        if not channel._confirm_selected:
            channel._confirm_selected = True
            channel.confirm_select()
        # The connection's confirm_publish option makes each publish wait for its own
        # confirm; this channel's publishes return at once, and wait() awaits them together.
        channel.basic_publish = functools.partial(amqp.Channel.basic_publish, channel)
        channel.events["basic_ack"].add(self._ack)
        channel.events["basic_nack"].add(self._nack)

    def published(self) -> int:
        """Note one publish; returns its delivery tag."""
        self.sent += 1
        self.pending.add(self.sent)
        return self.sent

    def _settle(self, tag: int, multiple: bool) -> set[int]:
        settled = {t for t in self.pending if t <= tag} if multiple else {tag} & self.pending
        self.pending -= settled
        return settled

    def _ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _nack(self, tag: int, multiple: bool) -> None:
        self.nacked |= self._settle(tag, multiple)

    def wait(self, timeout: float = CONFIRM_TIMEOUT) -> None:
        """Until the broker confirmed every message published so far; raises
        :class:`Unconfirmed` if it refused one or did not answer within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unconfirmed(f"{len(self.pending)} messages not confirmed within {timeout:.0f} s")
            try:
                self.channel.connection.drain_events(timeout=left)
            except TimeoutError:
                continue
        if self.nacked:
            raise Unconfirmed(f"the broker refused {len(self.nacked)} messages")

    def confirmed(self, tag: int) -> bool:
        return tag not in self.pending and tag not in self.nacked


class OutboxRelay:
    """Moves outbox rows to the broker. ``queues`` are declared before the first publish
    so no event is dropped as unroutable before its consumer has started once."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        connection_factory: ConnectionFactory,
        queues: Sequence[Queue] = (),
        batch_size: int = 100,
    ) -> None:
        self.session_factory = session_factory
        self.connection_factory = connection_factory
        self.queues = [*queues, DEAD_LETTER_QUEUE]
        self.batch_size = batch_size
        self.connection: Connection | None = None
        self._producer: Producer | None = None
        self._confirms: _Confirms | None = None
        self.published = 0

    # ------------------------------------------------------------ connection
    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            self.connection = self.connection_factory()
            self.connection.ensure_connection(max_retries=1)
            channel = self.connection.channel()
            self._producer = Producer(channel, exchange=EVENTS)
            # Bind copies: the module-level entities must not stay tied to a dead channel.
            for entity in [EVENTS, *self.queues]:
                entity(channel).declare()
            if isinstance(channel, amqp.Channel) and self.connection.transport_options.get("confirm_publish"):
                self._confirms = _Confirms(channel)
        return self._producer

    def reset(self) -> None:
        """Drop the broker connection; the next publish opens a new one."""
        self._producer = None
        self._confirms = None
        if self.connection is not None:
            try:
                self.connection.release()
            except Exception:
                log.debug("error while releasing a broken broker connection", exc_info=True)
        self.connection = None

    # ---------------------------------------------------------------- relay
    def relay_once(self) -> int:
        """Publish up to one batch of unpublished rows; returns how many were published.

        Rows the broker confirmed are committed as published even when a later row of the
        batch fails, then the error is raised so the caller can reconnect.
        """
        with self.session_factory() as session:
            if session.get_bind().dialect.name == "postgresql" and not session.scalar(
                sa.select(sa.func.pg_try_advisory_xact_lock(RELAY_LOCK))
            ):
                # Another worker's relay is publishing: one at a time keeps events in order.
                session.rollback()
                return 0
            rows = session.scalars(
                sa.select(OutboxEvent)
                .where(OutboxEvent.published_at.is_(None))
                .order_by(OutboxEvent.seq)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                session.rollback()
                return 0
            done = 0
            error: Exception | None = None
            try:
                producer = self._ensure_producer()
                confirms = self._confirms
                tags: list[int] = []
                for row in rows:
                    self._publish(producer, row)
                    if confirms is None:  # confirmed (or not needed) by the publish itself
                        done += 1
                    else:
                        tags.append(confirms.published())
                if confirms is not None:
                    try:
                        confirms.wait()
                    finally:
                        # in order: a row after one not confirmed is sent again with it
                        for tag in tags:
                            if not confirms.confirmed(tag):
                                break
                            done += 1
            except Exception as exc:  # noqa: BLE001 - re-raised below after the commit
                error = exc
                if done < len(rows):
                    rows[done].attempts += 1
            if done:
                # one statement for the batch, not one UPDATE per row
                table = OutboxEvent.__table__
                session.execute(
                    table.update()
                    .where(table.c.id.in_([row.id for row in rows[:done]]))
                    .values(published_at=utcnow())
                )
            session.commit()
            self.published += done
            if error is not None:
                raise error
            return done

    @staticmethod
    def _publish(producer: Producer, row: OutboxEvent) -> None:
        producer.publish(
            row.payload,
            exchange=EVENTS,
            routing_key=row.topic,
            serializer="json",
            delivery_mode=2,
            message_id=str(row.id),
            headers={
                "topic": row.topic,
                "marketplace_id": str(row.marketplace_id) if row.marketplace_id else None,
                "created_at": row.created_at.isoformat(),
            },
            retry=False,
        )

    def run(self, stop: threading.Event, poll_seconds: float = 0.5) -> None:
        """Relay until ``stop`` is set, reconnecting with back-off after broker errors."""
        backoff = poll_seconds
        while not stop.is_set():
            try:
                count = self.relay_once()
                backoff = poll_seconds
            except Exception:
                log.warning("outbox relay: publishing failed; retrying in %.1fs", backoff, exc_info=True)
                self.reset()
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if count < self.batch_size:
                self._heartbeat()
                stop.wait(poll_seconds)
        self.reset()

    def _heartbeat(self) -> None:
        """Keep an idle connection alive; a dead one is replaced at the next publish."""
        if self.connection is None:
            return
        try:
            self.connection.heartbeat_check()
        except Exception:  # noqa: BLE001 - any failure: drop the connection, reconnect later
            log.info("outbox relay: broker connection lost while idle; reconnecting on next event")
            self.reset()


def lag_seconds(session: Session) -> float:
    """Age of the oldest unpublished event, 0 when the outbox is drained."""
    oldest = session.scalar(
        sa.select(sa.func.min(OutboxEvent.created_at)).where(OutboxEvent.published_at.is_(None))
    )
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:  # aggregate results bypass the column type on SQLite
        oldest = oldest.replace(tzinfo=utcnow().tzinfo)
    return max(0.0, (utcnow() - oldest).total_seconds())
