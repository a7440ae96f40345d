"""The consumer base: each message is applied once, and acknowledged after its commit.

A consumer records the message id in ``processed_messages`` in the same transaction as
its own changes. A redelivered message (after a crash before the ack, a relay that sent
twice, two workers racing) finds its id there and is acknowledged without being applied
again. A handler that raises is retried with a growing delay, then parked in the
dead-letter queue with the error; it is never acknowledged as if it had worked. On
RabbitMQ the delay is a retry queue with a message TTL, so the consumer thread (shared by
every consumer of the worker) never sleeps.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from kombu import Exchange, Queue
from kombu.message import Message
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cmw.events.models import ProcessedMessage
from cmw.events.topology import DEAD_LETTER_QUEUE, consumer_queue

log = logging.getLogger(__name__)

ATTEMPTS_HEADER = "x-mercato-attempts"
#: longest wait between two attempts, in seconds
MAX_RETRY_DELAY = 60.0
#: the delays retry queues exist for, in milliseconds; a wanted delay rounds up to one
RETRY_BUCKETS_MS = (100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000)


def _broker_has_ttl(message: Message) -> bool:
    """RabbitMQ (AMQP) has message TTLs and dead-lettering; kombu's virtual transports don't."""
    client = getattr(message.channel.connection, "client", None)
    transport = getattr(client, "transport", None)
    return getattr(transport, "driver_type", "") == "amqp"


@dataclasses.dataclass(frozen=True)
class Event:
    """What a handler receives: the message id, its topic and its JSON payload."""

    id: str
    topic: str
    payload: dict[str, Any]
    marketplace_id: uuid.UUID | None = None


def as_uuid(value: Any) -> uuid.UUID | None:
    """A payload's id as a UUID; None when it is missing or not one."""
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        return None


class Outcome:
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    RETRIED = "retried"
    DEAD = "dead"
    REJECTED = "rejected"


def _mark_all_processed(session: Session, consumer: str, message_ids: list[str]) -> set[str]:
    """Record that ``consumer`` applies these messages; returns the ids not recorded before."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        marker = postgresql.insert(ProcessedMessage).values(
            [{"consumer": consumer, "message_id": m} for m in message_ids]
        )
        found = connection.execute(marker.on_conflict_do_nothing().returning(ProcessedMessage.message_id))
        return set(found.scalars())
    # SQLite: the row count of each (RETURNING only from SQLite 3.35; psycopg reports no row count)
    fresh = set()
    for message_id in dict.fromkeys(message_ids):
        fallback = sqlite.insert(ProcessedMessage).values(consumer=consumer, message_id=message_id)
        if connection.execute(fallback.on_conflict_do_nothing()).rowcount == 1:
            fresh.add(message_id)
    return fresh


def _mark_processed(session: Session, consumer: str, message_id: str) -> bool:
    """Record that ``consumer`` applies ``message_id``; False if it was recorded before."""
    return message_id in _mark_all_processed(session, consumer, [message_id])


class _HandlerFailed(Exception):
    """The handler of the batch's message at ``index`` raised (the cause)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class EventConsumer:
    """Subclass, name it, list its topics and implement :meth:`handle`.

    ``handle`` makes its changes with the session it is given and does not commit; the
    base class commits once, together with the processed-message record.
    """

    #: stable name, recorded with each applied message id; also the queue name
    name: ClassVar[str]
    #: routing-key patterns the queue is bound to
    topics: ClassVar[tuple[str, ...]]
    #: content types the consumer takes (kombu's names)
    accept: ClassVar[tuple[str, ...]] = ("json",)
    #: attempts before a failing message is parked in the dead-letter queue
    max_attempts: ClassVar[int] = 5
    #: first retry delay in seconds, doubled at each attempt
    retry_delay: ClassVar[float] = 0.2
    #: messages of this consumer applied in one transaction when several are waiting (at
    #: most the worker's prefetch count, 10, which RabbitMQ sets for every consumer). Only
    #: for a handler that changes nothing but the database: a batch with a failing message
    #: is rolled back and applied again one message at a time, and an e-mail sent or a
    #: call made by the first try would be made twice.
    batch_size: ClassVar[int] = 1

    def handle(self, session: Session, event: Event) -> None:
        raise NotImplementedError

    def queue(self) -> Queue:
        """This consumer's durable queue, bound to its topics."""
        return consumer_queue(self.name, self.topics)

    # ------------------------------------------------------------ applying
    def apply(self, session_factory: Callable[[], Session], body: Any, message: Message) -> str:
        """Apply one delivered message once, then acknowledge it. Returns the outcome."""
        event = self._parse(body, message)
        if event is None:
            log.error("%s: message without id or JSON object body parked", self.name)
            self._park(message, body, "message has no message_id or its body is not an object")
            return Outcome.REJECTED
        try:
            applied = self._apply_once(session_factory, event)
        except Exception as exc:  # noqa: BLE001 - every failure is retried or parked
            return self._failed(message, body, event, exc)
        message.ack()
        return Outcome.APPLIED if applied else Outcome.DUPLICATE

    def apply_many(
        self, session_factory: Callable[[], Session], deliveries: Sequence[tuple[Any, Message]]
    ) -> list[str]:
        """Apply delivered messages in one transaction, each once, then acknowledge them;
        their outcomes, in order. Nothing of a batch that fails is kept: a message whose
        handler raised is applied on its own (and so alone retried or parked) and the rest
        again as a batch; a batch that fails to commit, each message on its own."""
        if len(deliveries) == 1:
            return [self.apply(session_factory, *deliveries[0])]
        events = [self._parse(body, message) for body, message in deliveries]
        if any(event is None for event in events):
            return [self.apply(session_factory, body, message) for body, message in deliveries]
        try:
            applied = self._apply_batch(session_factory, [e for e in events if e is not None])
        except _HandlerFailed as failed:
            # in their order: those before it again as a batch, it alone, then the rest
            log.info("%s: a message of a batch failed; applying it alone", self.name, exc_info=True)
            at = failed.index
            before = self.apply_many(session_factory, deliveries[:at]) if at else []
            alone = self.apply(session_factory, *deliveries[at])
            after = self.apply_many(session_factory, deliveries[at + 1 :]) if at + 1 < len(deliveries) else []
            return [*before, alone, *after]
        except Exception:  # each is applied again alone, and fails alone
            log.info("%s: a batch of %d failed; each alone now", self.name, len(deliveries), exc_info=True)
            return [self.apply(session_factory, body, message) for body, message in deliveries]
        for _, message in deliveries:
            message.ack()
        return [Outcome.APPLIED if done else Outcome.DUPLICATE for done in applied]

    def _apply_batch(self, session_factory: Callable[[], Session], events: list[Event]) -> list[bool]:
        """Whether each event was applied now (False: applied before, or earlier in the batch)."""
        with session_factory() as session:
            fresh = _mark_all_processed(session, self.name, [e.id for e in events])
            applied = []
            for index, event in enumerate(events):
                applied.append(event.id in fresh)
                if event.id in fresh:
                    fresh.discard(event.id)  # a message delivered twice in the batch: once
                    try:
                        self.handle(session, event)
                    except Exception as exc:
                        raise _HandlerFailed(index) from exc
            session.commit()
        return applied

    def _apply_once(self, session_factory: Callable[[], Session], event: Event) -> bool:
        with session_factory() as session:
            # The marker first, in one statement: a message applied before inserts nothing;
            # a worker applying the same message concurrently blocks here until the other
            # commits (then inserts nothing) or rolls back (then goes on).
            if not _mark_processed(session, self.name, event.id):
                session.rollback()
                return False
            try:
                self.handle(session, event)
                session.commit()
            except IntegrityError:
                session.rollback()
                if self._already_processed(session_factory, event.id):
                    return False
                raise
            return True

    def _already_processed(self, session_factory: Callable[[], Session], message_id: str) -> bool:
        with session_factory() as session:
            return session.get(ProcessedMessage, (self.name, message_id)) is not None

    @staticmethod
    def _parse(body: Any, message: Message) -> Event | None:
        message_id = message.properties.get("message_id")
        if not message_id or not isinstance(body, dict):
            return None
        headers = message.headers or {}
        topic = headers.get("topic") or message.delivery_info.get("routing_key") or ""
        raw_tenant = headers.get("marketplace_id")
        try:
            tenant = uuid.UUID(raw_tenant) if raw_tenant else None
        except ValueError:
            tenant = None
        return Event(id=str(message_id), topic=str(topic), payload=body, marketplace_id=tenant)

    # ------------------------------------------------------------ failures
    def _failed(self, message: Message, body: Any, event: Event, exc: Exception) -> str:
        attempts = int((message.headers or {}).get(ATTEMPTS_HEADER, 0)) + 1
        if attempts >= self.max_attempts:
            log.error(
                "%s: %s %s failed %d times, parked", self.name, event.topic, event.id, attempts, exc_info=exc
            )
            self._park(message, body, f"{type(exc).__name__}: {exc}", attempts)
            return Outcome.DEAD
        log.warning(
            "%s: %s %s failed (attempt %d), retrying",
            self.name,
            event.topic,
            event.id,
            attempts,
            exc_info=exc,
        )
        delay = min(self.retry_delay * 2 ** (attempts - 1), MAX_RETRY_DELAY)
        if _broker_has_ttl(message):
            self._republish_later(message, body, delay, {ATTEMPTS_HEADER: attempts})
        else:
            # The embedded transport has no per-message delays: a short pause instead.
            time.sleep(min(delay, 2.0))
            self._republish(message, body, self.name, {ATTEMPTS_HEADER: attempts})
        message.ack()
        return Outcome.RETRIED

    def _republish_later(self, message: Message, body: Any, delay: float, extra: dict[str, Any]) -> None:
        """Park the message in a retry queue whose TTL dead-letters it back to this
        consumer's queue after ``delay``: the consumer thread never sleeps, so one failing
        consumer (SMTP down) does not stall the others."""
        wanted_ms = max(1, int(delay * 1000))
        bucket = next((b for b in RETRY_BUCKETS_MS if b >= wanted_ms), RETRY_BUCKETS_MS[-1])
        retry = Queue(
            f"{self.name}.retry.{bucket}ms",
            exchange=Exchange(""),
            routing_key=f"{self.name}.retry.{bucket}ms",
            durable=True,
            queue_arguments={
                "x-message-ttl": bucket,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.name,
                # Unused retry queues go away by themselves.
                "x-expires": bucket + 3_600_000,
            },
        )
        retry(message.channel).declare()
        self._republish(message, body, retry.name, extra)

    def _park(self, message: Message, body: Any, reason: str, attempts: int = 1) -> None:
        self._republish(
            message,
            body,
            DEAD_LETTER_QUEUE.name,
            {"x-mercato-consumer": self.name, "x-mercato-error": reason[:1000], ATTEMPTS_HEADER: attempts},
        )
        message.ack()

    @staticmethod
    def _republish(message: Message, body: Any, queue_name: str, extra: dict[str, Any]) -> None:
        """Send the message again straight to a queue through the default exchange,
        keeping its id so deduplication still holds."""
        channel = message.channel
        headers = {**(message.headers or {}), **extra}
        properties = {k: v for k, v in message.properties.items() if k in ("message_id", "delivery_mode")}
        payload = channel.prepare_message(
            message.body,
            priority=0,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers=headers,
            properties=properties,
        )
        channel.basic_publish(payload, exchange="", routing_key=queue_name)
