"""Small helpers shared by tests."""

from __future__ import annotations

import functools
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import sqlalchemy as sa
from flask.testing import FlaskClient
from kombu import Connection
from sqlalchemy.orm import Session, sessionmaker

from cmw.events.consumer import EventConsumer
from cmw.events.worker import Worker

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, message: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.02)


def tag(length: int = 10) -> str:
    """A random lowercase word, usable in topics and queue names."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(length))


def on_host(client: FlaskClient, host: str | None) -> None:
    """Send the client's next requests to ``host`` (None: back to its default)."""
    if host is None:
        vars(client).pop("open", None)
    else:
        client.open = functools.partial(type(client).open, client, base_url=f"http://{host}")  # type: ignore[method-assign]


def connect() -> Connection:
    """A connection to the test broker, with publisher confirms."""
    from tests.conftest import broker_url

    return Connection(broker_url(), transport_options={"confirm_publish": True}, heartbeat=30)


@contextmanager
def worker_running(factory: sessionmaker[Session], consumers: Sequence[EventConsumer]) -> Iterator[Worker]:
    """A worker relaying the outbox to ``consumers`` over the test broker, each on a queue of
    its own (so nothing from another run is consumed or left behind), stopped at the end."""
    suffix = tag(8)
    for consumer in consumers:
        consumer.name = f"{consumer.name}-{suffix}"  # type: ignore[misc]
    runner = Worker(connect, factory, list(consumers), relay_poll_seconds=0.05)
    thread = threading.Thread(target=runner.run_forever, daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        runner.stop()
        thread.join(15)
        with connect() as conn:
            for consumer in consumers:
                consumer.queue()(conn.default_channel).delete()


def index_plan(session: Session, statement: sa.Executable) -> str:
    """PostgreSQL's plan for ``statement`` with sequential scans ruled out, in the session's
    transaction: an index the query can use shows in it; without one, a Seq Scan still does."""
    connection = session.connection()
    compiled = statement.compile(dialect=connection.dialect)
    session.execute(sa.text("SET LOCAL enable_seqscan = off"))
    rows = connection.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params)
    return "\n".join(row[0] for row in rows)
