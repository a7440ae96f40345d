"""Events: the outbox commits with its change, the relay loses nothing when RabbitMQ goes
away mid-way, and consumers apply each message once."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from kombu import Connection, Consumer, Exchange, Producer, Queue
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import Organisation, OrganisationKind
from cmw.audit.models import AuditEntry
from cmw.events.consumer import Event, EventConsumer, Outcome
from cmw.events.models import OutboxEvent, ProcessedMessage
from cmw.events.relay import OutboxRelay, Unconfirmed
from cmw.events.service import emit, together
from cmw.events.topology import DEAD_LETTER_QUEUE, EVENTS
from cmw.events.worker import Worker
from cmw.marketplaces.service import platform
from tests.conftest import broker_url
from tests.helpers import tag, wait_until

Factory = sessionmaker[Session]


def connect() -> Connection:
    return Connection(broker_url(), transport_options={"confirm_publish": True}, connect_timeout=3)


@pytest.fixture
def topic_tag() -> str:
    return tag()


@pytest.fixture
def test_queue(topic_tag: str) -> Iterator[Queue]:
    """A queue bound to this test's topics only, deleted afterwards."""
    queue = Queue(f"test.{topic_tag}", exchange=EVENTS, routing_key=f"test.{topic_tag}.#", durable=False)
    with connect() as conn:
        EVENTS(conn.default_channel).declare()
        queue(conn.default_channel).declare()
    yield queue
    with connect() as conn:
        queue(conn.default_channel).delete()


def drain(queue: Queue, expect: int, timeout: float = 15.0) -> list[Any]:
    """Consume until ``expect`` messages arrived (or fail); returns the kombu messages."""
    received: list[Any] = []
    with connect() as conn:

        def on_message(_body: Any, message: Any) -> None:
            received.append(message)
            message.ack()

        with Consumer(conn, queues=[queue], callbacks=[on_message], accept=["json"]):

            def enough() -> bool:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.2)
                return len(received) >= expect

            wait_until(enough, timeout, f"{expect} messages on {queue.name}")
            # Anything more (duplicates) still in flight?
            try:
                while True:
                    conn.drain_events(timeout=0.3)
            except TimeoutError:
                pass
    return received


# -------------------------------------------------------------- atomicity
def test_a_change_and_its_event_commit_together(committed_db: Factory) -> None:
    with committed_db() as session:
        organisation = accounts.create_organisation(
            session,
            platform(session),
            kind=OrganisationKind.CUSTOMER,
            name="Atomic",
            billing=accounts.BillingDetails(legal_name="Atomic Ltd", country="GB"),
        )
        organisation_id = organisation.id
        session.commit()
    with committed_db() as session:
        assert session.get(Organisation, organisation_id) is not None
        events = session.scalars(
            sa.select(OutboxEvent).where(OutboxEvent.topic == "organisation.created")
        ).all()
        assert [e.payload["organisation_id"] for e in events] == [str(organisation_id)]


def test_a_failed_change_leaves_no_event(committed_db: Factory) -> None:
    with committed_db() as session, pytest.raises(RuntimeError):
        accounts.create_organisation(
            session,
            platform(session),
            kind=OrganisationKind.CUSTOMER,
            name="Doomed",
            billing=accounts.BillingDetails(legal_name="Doomed Ltd", country="GB"),
        )
        raise RuntimeError("the request fails after the service call")
    with committed_db() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Organisation)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(OutboxEvent)) == 0


def test_events_emitted_together_are_written_when_the_block_ends_and_go_with_its_transaction(
    committed_db: Factory,
) -> None:
    """``together`` writes a block's events and their audit entries with one INSERT each, in
    the session's transaction: seen at once inside it, kept through a savepoint that rolls
    back after them, gone with a savepoint that rolls back around them, and nothing from a
    block an exception leaves."""

    def topics(session: Session) -> list[str]:
        return list(session.scalars(sa.select(OutboxEvent.topic).order_by(OutboxEvent.seq)))

    def audited(session: Session) -> list[str]:
        return list(session.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.id)))

    with committed_db() as session:
        with together(session):
            emit(session, "order.placed", {"order_id": "o-1"})
            with together(session):  # nested: the outer block writes
                emit(session, "test.together.happened", {"n": 1})
            assert topics(session) == []  # not yet
        assert topics(session) == ["order.placed", "test.together.happened"]
        assert audited(session) == ["order.placed"]  # only events about money or machines

        savepoint = session.begin_nested()
        with together(session):
            emit(session, "test.together.undone", {})
        savepoint.rollback()
        with pytest.raises(RuntimeError), together(session):
            emit(session, "test.together.failed", {})
            raise RuntimeError("the block fails")
        session.commit()

    with committed_db() as session:
        assert topics(session) == ["order.placed", "test.together.happened"]
        assert audited(session) == ["order.placed"]
        placed = session.scalars(sa.select(OutboxEvent).where(OutboxEvent.topic == "order.placed")).one()
        assert placed.payload == {"order_id": "o-1"} and placed.published_at is None and placed.attempts == 0
        entry = session.scalars(sa.select(AuditEntry)).one()
        assert (entry.object_type, entry.object_id, entry.actor) == ("order", "o-1", "system")


def test_a_together_block_keeps_only_what_its_transaction_keeps(committed_db: Factory) -> None:
    """A nested block that fails takes its own events away; what a savepoint begun inside
    the block emits goes with that savepoint; a block that outlives its transaction raises."""
    with committed_db() as session:
        with together(session):
            emit(session, "test.kept.first", {})
            with pytest.raises(RuntimeError), together(session):
                emit(session, "test.dropped.nested", {})
                raise RuntimeError("the nested block fails")
            savepoint = session.begin_nested()
            emit(session, "test.dropped.savepoint", {})
            savepoint.rollback()
            savepoint = session.begin_nested()
            emit(session, "test.kept.savepoint", {})
            savepoint.commit()
            emit(session, "test.kept.last", {})
        with pytest.raises(RuntimeError, match="transaction it began in"), together(session):
            emit(session, "test.dropped.committed", {})
            session.commit()
        session.commit()
    with committed_db() as session:
        topics = session.scalars(sa.select(OutboxEvent.topic).order_by(OutboxEvent.seq)).all()
        assert sorted(topics) == ["test.kept.first", "test.kept.last", "test.kept.savepoint"]


def test_emit_refuses_a_malformed_topic(db_session: Session) -> None:
    with pytest.raises(ValueError, match=r"entity\.happened"):
        emit(db_session, "NoDots", {})


# ------------------------------------------------------------------- relay
def test_relay_publishes_in_order_with_message_ids(
    committed_db: Factory, topic_tag: str, test_queue: Queue
) -> None:
    with committed_db() as session:
        ids = [str(emit(session, f"test.{topic_tag}.happened", {"n": n}).id) for n in range(25)]
        session.commit()
    relay = OutboxRelay(committed_db, connect, queues=[test_queue], batch_size=10)
    assert relay.relay_once() == 10
    assert relay.relay_once() == 10
    assert relay.relay_once() == 5
    assert relay.relay_once() == 0
    relay.reset()
    messages = drain(test_queue, 25)
    assert [m.properties["message_id"] for m in messages] == ids
    assert [m.payload["n"] for m in messages] == list(range(25))
    assert messages[0].delivery_info["routing_key"] == f"test.{topic_tag}.happened"
    with committed_db() as session:
        assert (
            session.scalar(
                sa.select(sa.func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
            )
            == 0
        )


def test_nothing_is_lost_when_rabbitmq_goes_away_mid_way(
    committed_db: Factory, topic_tag: str, test_queue: Queue
) -> None:
    total = 400
    with committed_db() as session:
        for n in range(total):
            emit(session, f"test.{topic_tag}.happened", {"n": n})
        session.commit()
        expected = {str(i) for i in session.scalars(sa.select(OutboxEvent.id))}

    broker_up = threading.Event()
    broker_up.set()
    refused = []

    def flaky_connect() -> Connection:
        if not broker_up.is_set():
            refused.append(1)
            raise ConnectionRefusedError("broker is down (test)")
        return connect()

    relay = OutboxRelay(committed_db, flaky_connect, queues=[test_queue], batch_size=20)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        wait_until(lambda: relay.published >= 100, message="the first 100 events")
        # The broker goes away: the open connection is cut and new ones are refused.
        broker_up.clear()
        assert relay.connection is not None
        relay.connection.connection.sock.shutdown(socket.SHUT_RDWR)
        wait_until(lambda: len(refused) >= 2, message="the relay to notice and retry")
        stuck_at = relay.published
        assert stuck_at < total, "the relay kept publishing without a broker"
        broker_up.set()
        wait_until(
            lambda: relay.published >= total or _unpublished(committed_db) == 0, 30, "the rest after recovery"
        )
        wait_until(lambda: _unpublished(committed_db) == 0, 30, "an empty outbox")
    finally:
        stop.set()
        thread.join(10)

    messages = drain(test_queue, total, timeout=30)
    received = [m.properties["message_id"] for m in messages]
    lost = expected - set(received)
    duplicated = len(received) - len(set(received))
    print(f"relay under a broker outage: sent {total}, lost {len(lost)}, duplicated {duplicated}")
    assert lost == set()
    # At-least-once: a batch cut mid-way may be sent again; consumers drop those by id.
    assert duplicated <= 20


def test_messages_the_broker_refuses_stay_in_the_outbox_in_order(
    committed_db: Factory, topic_tag: str
) -> None:
    """The relay publishes a batch, then awaits the broker's confirms once: a queue that
    takes only 4 messages makes RabbitMQ refuse (nack) the rest, and exactly the first 4
    rows are marked published; the first refused one counts an attempt, and the relay
    sends it and those after it again next time."""
    full = Queue(
        f"test.{topic_tag}.full",
        exchange=EVENTS,
        routing_key=f"test.{topic_tag}.#",
        durable=False,
        queue_arguments={"x-max-length": 4, "x-overflow": "reject-publish"},
    )
    with connect() as conn:
        EVENTS(conn.default_channel).declare()
        full(conn.default_channel).declare()
    try:
        with committed_db() as session:
            ids = [emit(session, f"test.{topic_tag}.happened", {"n": n}).id for n in range(10)]
            session.commit()
        relay = OutboxRelay(committed_db, connect, queues=[full], batch_size=10)
        with pytest.raises(Unconfirmed, match="refused 6 messages"):
            relay.relay_once()
        assert relay.published == 4
        with committed_db() as session:
            rows = {r.id: r for r in session.scalars(sa.select(OutboxEvent).where(OutboxEvent.id.in_(ids)))}
        assert [rows[i].published_at is not None for i in ids] == [True] * 4 + [False] * 6
        assert [rows[i].attempts for i in ids] == [0] * 4 + [1] + [0] * 5
        relay.reset()
        assert [m.payload["n"] for m in drain(full, 4)] == [0, 1, 2, 3]
        # room again: the rest goes, in order
        relay = OutboxRelay(committed_db, connect, queues=[full], batch_size=4)
        assert relay.relay_once() == 4
        relay.reset()
        assert [m.payload["n"] for m in drain(full, 4)] == [4, 5, 6, 7]
    finally:
        with connect() as conn:
            full(conn.default_channel).delete()


def _unpublished(factory: Factory) -> int:
    with factory() as session:
        return (
            session.scalar(
                sa.select(sa.func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
            )
            or 0
        )


# ---------------------------------------------------------------- consumers
class RecordingConsumer(EventConsumer):
    """Applies a message by writing an event of its own: a side effect we can count."""

    topics = ()
    max_attempts = 3
    retry_delay = 0.01

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name  # type: ignore[misc]
        self.topics = (f"test.{name}.#",)  # type: ignore[misc]
        self.fail = fail

    def handle(self, session: Session, event: Event) -> None:
        emit(session, f"test.{self.name}.applied", {"source": event.id})
        session.flush()
        if self.fail:
            raise RuntimeError("handler failed (test)")


def _applied(factory: Factory, consumer: RecordingConsumer) -> int:
    with factory() as session:
        return (
            session.scalar(
                sa.select(sa.func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.topic == f"test.{consumer.name}.applied")
            )
            or 0
        )


def _publish_raw(queue: Queue, message_id: str, body: dict[str, Any], topic: str) -> None:
    with connect() as conn:
        producer = Producer(conn.default_channel)
        producer.publish(
            body,
            exchange=Exchange(""),
            routing_key=queue.name,
            message_id=message_id,
            headers={"topic": topic},
            serializer="json",
            declare=[queue],
        )


@pytest.fixture
def consumer_queue() -> Iterator[RecordingConsumer]:
    consumer = RecordingConsumer(tag())
    yield consumer
    with connect() as conn:
        consumer.queue()(conn.default_channel).delete()


def _consume(factory: Factory, consumer: RecordingConsumer, count: int, ack: bool = True) -> list[str]:
    """Take ``count`` deliveries from the consumer's queue and apply them; their outcomes."""
    outcomes: list[str] = []
    with connect() as conn:

        def on_message(body: Any, message: Any) -> None:
            if len(outcomes) >= count:
                return  # not ours to handle: left unacknowledged, redelivered later
            if ack:
                outcomes.append(consumer.apply(factory, body, message))
            else:
                # Apply and commit, then "crash" before the acknowledgement.
                event = consumer._parse(body, message)
                assert event is not None
                consumer._apply_once(factory, event)
                outcomes.append("applied-not-acked")

        with Consumer(
            conn, queues=[consumer.queue()], callbacks=[on_message], accept=["json"], prefetch_count=1
        ):

            def enough() -> bool:
                with contextlib.suppress(TimeoutError, socket.timeout):
                    conn.drain_events(timeout=0.2)
                return len(outcomes) >= count

            wait_until(enough, 10, f"{count} deliveries")
    return outcomes


def test_a_message_delivered_twice_is_applied_once(
    committed_db: Factory, consumer_queue: RecordingConsumer
) -> None:
    queue = consumer_queue.queue()
    message_id = str(uuid.uuid4())
    for _ in range(2):
        _publish_raw(queue, message_id, {"n": 1}, f"test.{consumer_queue.name}.happened")
    assert _consume(committed_db, consumer_queue, 2) == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert _applied(committed_db, consumer_queue) == 1


def test_a_crash_after_commit_before_ack_redelivers_and_applies_once(
    committed_db: Factory, consumer_queue: RecordingConsumer
) -> None:
    queue = consumer_queue.queue()
    _publish_raw(queue, str(uuid.uuid4()), {"n": 1}, f"test.{consumer_queue.name}.happened")
    assert _consume(committed_db, consumer_queue, 1, ack=False) == ["applied-not-acked"]
    # The connection closed without an ack: RabbitMQ delivers the message again.
    assert _consume(committed_db, consumer_queue, 1) == [Outcome.DUPLICATE]
    assert _applied(committed_db, consumer_queue) == 1


class SlowConsumer(RecordingConsumer):
    """Holds its transaction open until told to finish."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.started = threading.Event()
        self.finish = threading.Event()

    def handle(self, session: Session, event: Event) -> None:
        super().handle(session, event)
        self.started.set()
        assert self.finish.wait(10)


def test_two_workers_applying_one_message_at_once_apply_it_once(committed_db: Factory) -> None:
    """The second worker waits on the first one's marker, then finds the message applied."""
    consumer = SlowConsumer(tag())
    event = Event(
        id=str(uuid.uuid4()), topic=f"test.{consumer.name}.happened", payload={}, marketplace_id=None
    )
    results: dict[str, bool] = {}
    first = threading.Thread(
        target=lambda: results.__setitem__("first", consumer._apply_once(committed_db, event))
    )
    first.start()
    assert consumer.started.wait(10)
    second = threading.Thread(
        target=lambda: results.__setitem__("second", consumer._apply_once(committed_db, event))
    )
    second.start()
    second.join(0.5)
    assert second.is_alive(), "the second worker did not wait for the first one's transaction"
    consumer.finish.set()
    first.join(10)
    second.join(10)
    assert results == {"first": True, "second": False}
    assert _applied(committed_db, consumer) == 1


def test_a_failing_handler_is_retried_then_parked_with_its_error(committed_db: Factory) -> None:
    consumer = RecordingConsumer(tag(), fail=True)
    queue = consumer.queue()
    message_id = str(uuid.uuid4())
    try:
        _publish_raw(queue, message_id, {"n": 1}, f"test.{consumer.name}.happened")
        outcomes = _consume(committed_db, consumer, consumer.max_attempts)
        assert outcomes == [Outcome.RETRIED, Outcome.RETRIED, Outcome.DEAD]
        assert _applied(committed_db, consumer) == 0, "a failed handler's changes are rolled back"
        with committed_db() as session:
            assert session.get(ProcessedMessage, (consumer.name, message_id)) is None
        parked = [m for m in drain(DEAD_LETTER_QUEUE, 1) if m.properties.get("message_id") == message_id]
        assert len(parked) == 1
        assert parked[0].headers["x-mercato-consumer"] == consumer.name
        assert "handler failed (test)" in parked[0].headers["x-mercato-error"]
    finally:
        with connect() as conn:
            queue(conn.default_channel).delete()


def test_the_worker_relays_and_consumes_end_to_end(
    committed_db: Factory, consumer_queue: RecordingConsumer
) -> None:
    worker = Worker(connect, committed_db, [consumer_queue], relay_poll_seconds=0.05)
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:
        with committed_db() as session:
            for n in range(5):
                emit(session, f"test.{consumer_queue.name}.happened", {"n": n})
            session.commit()
        wait_until(lambda: _applied(committed_db, consumer_queue) == 5, 20, "5 applied events")
    finally:
        worker.stop()
        thread.join(15)
    assert not thread.is_alive()


def test_a_worker_whose_handler_keeps_failing_still_stops_at_once(committed_db: Factory) -> None:
    """Retries talk to the broker (a retry queue, a confirmed publish); done inside the
    delivery callback, every wait there took the next deliveries into nested callbacks
    and the worker never came back to its loop to see it should stop."""
    consumer = RecordingConsumer(tag(), fail=True)
    consumer.max_attempts = 50  # type: ignore[misc]
    queue = consumer.queue()
    worker = Worker(connect, committed_db, [consumer], relay_poll_seconds=0.05)
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    try:
        for n in range(30):
            _publish_raw(queue, str(uuid.uuid4()), {"n": n}, f"test.{consumer.name}.happened")
        attempts: list[int] = []
        original = consumer._failed

        def counting(*args: Any) -> str:
            attempts.append(1)
            return original(*args)

        consumer._failed = counting  # type: ignore[method-assign]
        thread.start()
        wait_until(lambda: len(attempts) >= 60, 30, "the handler failing again and again")
        stopping = time.monotonic()
        worker.stop()
        thread.join(10)
        assert not thread.is_alive(), "the worker did not stop"
        assert time.monotonic() - stopping < 5
    finally:
        worker.stop()
        with connect() as conn:
            queue(conn.default_channel).delete()


def test_deliveries_of_a_lost_connection_do_not_keep_the_worker_reconnecting(committed_db: Factory) -> None:
    """A delivery noted just before the connection was lost (the broker gives it again on
    the next one) is dropped at the reconnection. Acknowledged on its dead channel, it made
    the worker reconnect; the next delivery was then the stale one, and so on for ever: a
    broker cut left e-mails unsent."""
    consumer = RecordingConsumer(tag())
    queue = consumer.queue()
    with connect() as conn:
        queue(conn.default_channel).declare()
    _publish_raw(queue, str(uuid.uuid4()), {"n": 0}, f"test.{consumer.name}.happened")
    with connect() as conn:  # a delivery of a connection that is then gone
        stale = queue(conn.default_channel).get(no_ack=False)
        assert stale is not None
    with _running(committed_db, consumer, before=[(consumer, stale.payload, stale)]):
        for n in range(1, 4):
            _publish_raw(queue, str(uuid.uuid4()), {"n": n}, f"test.{consumer.name}.happened")
        # the stale one comes again on the new connection: all four applied, once each
        wait_until(lambda: _applied(committed_db, consumer) == 4, 20, "4 applied events")
    assert _applied(committed_db, consumer) == 4


@contextlib.contextmanager
def _running(factory: Factory, consumer: EventConsumer, before: list[Any] | None = None) -> Iterator[None]:
    """A worker for ``consumer`` on its own queue (``before``: deliveries already in hand),
    stopped at the end, and the queue deleted."""
    worker = Worker(connect, factory, [consumer], relay_poll_seconds=0.05)
    worker._inbox.extend(before or [])
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop()
        thread.join(15)
        with connect() as conn:
            consumer.queue()(conn.default_channel).delete()
    assert not thread.is_alive(), "the worker did not stop"


class BatchingConsumer(RecordingConsumer):
    """Applies up to 20 waiting messages in one transaction; the message ``{"n": 7}`` fails."""

    batch_size = 20

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.failures = 0

    def handle(self, session: Session, event: Event) -> None:
        super().handle(session, event)
        if event.payload.get("n") == 7:
            self.failures += 1
            raise RuntimeError("this one fails (test)")


def test_a_batching_consumer_applies_waiting_messages_together_and_each_once(committed_db: Factory) -> None:
    """40 messages waiting, one of them twice and one failing: the worker applies them in a
    few transactions, each message once; the failing one is taken out of its batch, and
    alone is retried, then parked, without the others applied twice."""
    consumer = BatchingConsumer(tag())
    queue = consumer.queue()
    with connect() as conn:
        EVENTS(conn.default_channel).declare()
        queue(conn.default_channel).declare()
    ids = [str(uuid.uuid4()) for _ in range(40)]
    for n, message_id in enumerate(ids):
        _publish_raw(queue, message_id, {"n": n}, f"test.{consumer.name}.happened")
    _publish_raw(queue, ids[3], {"n": 3}, f"test.{consumer.name}.happened")  # delivered twice
    expected = ids[:7] + ids[8:]
    with _running(committed_db, consumer):
        wait_until(lambda: consumer.failures >= consumer.max_attempts, 30, "the failing message parked")
        wait_until(lambda: set(_sources(committed_db, consumer)) >= set(expected), 20, "the other 39 applied")
    # (the relay sends the consumer's own "applied" events to it too: only the 40 count)
    with committed_db() as session:
        marked = session.execute(
            sa.text("SELECT message_id, xmin::text FROM processed_messages WHERE message_id = ANY(:ids)"),
            {"ids": ids},
        ).all()
    assert sorted(m for m, _ in marked) == sorted(expected)
    sources = [s for s in _sources(committed_db, consumer) if s in ids]
    assert sorted(sources) == sorted(expected), "a message applied twice, or one lost"
    transactions = len({xmin for _, xmin in marked})
    assert transactions <= 8, f"{transactions} transactions for 39 messages: not batched"
    # its attempts, and once more in its batch when it came in one (not counted an attempt)
    assert consumer.max_attempts <= consumer.failures <= consumer.max_attempts + 1


def _sources(factory: Factory, consumer: RecordingConsumer) -> list[str]:
    """The ids of the messages the consumer applied, once per application."""
    with factory() as session:
        return list(
            session.scalars(
                sa.select(OutboxEvent.payload["source"].as_string()).where(
                    OutboxEvent.topic == f"test.{consumer.name}.applied"
                )
            )
        )
