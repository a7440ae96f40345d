"""Writing events: call :func:`emit` inside the transaction that makes the change."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session

from cmw.audit import events as audit
from cmw.audit.models import AuditEntry
from cmw.db import utcnow
from cmw.events.models import OutboxEvent

_TOPIC = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+$")
#: session.info key of the rows a :func:`together` block has emitted so far
_BATCH = "mercato.events_together"


def emit(
    session: Session,
    topic: str,
    payload: dict[str, Any],
    *,
    marketplace_id: uuid.UUID | None = None,
) -> OutboxEvent:
    """Add an event to the outbox; it is published only if the session commits."""
    if not _TOPIC.match(topic):
        raise ValueError(f"event topic {topic!r} is not like 'entity.happened'")
    batch: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = session.info.get(_BATCH)
    if batch is not None:
        now = utcnow()
        row = {
            "id": uuid.uuid4(),
            "topic": topic,
            "payload": payload,
            "marketplace_id": marketplace_id,
            "created_at": now,
            "published_at": None,
            "attempts": 0,
        }
        batch[0].append(row)
        entry = audit.entry_for_event(topic, payload, marketplace_id, now)
        if entry is not None:
            batch[1].append(entry)
        # what callers read of an event (its id, topic, payload); never added to a session
        return OutboxEvent(**row)
    # The id is set here so callers have it at once; the row goes in with the session's next
    # flush, together with the change it describes (several events, one INSERT).
    event = OutboxEvent(id=uuid.uuid4(), topic=topic, payload=payload, marketplace_id=marketplace_id)
    session.add(event)
    audit.from_event(session, topic, payload, marketplace_id)
    return event


def add_audit_row(session: Session, values: dict[str, Any]) -> bool:
    """Add an audit log row (column values) to the session's :func:`together` block, to be
    written with its events; False if no block is open."""
    batch: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = session.info.get(_BATCH)
    if batch is None:
        return False
    batch[1].append(values)
    return True


@contextlib.contextmanager
def together(session: Session) -> Iterator[None]:
    """Events emitted in the block (and their audit entries) are written when it ends, one
    ``INSERT`` for the outbox and one for the audit log, in the session's transaction.

    For the busiest paths that emit several events at once (an order emits three): rows
    written through Core cost a third of what the unit of work spends on them. They are in
    the transaction as soon as the block ends, so they commit or roll back with it, savepoints
    included; a block left by an exception writes nothing. Blocks nest: the outermost writes.
    """
    if _BATCH in session.info:
        yield
        return
    events: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    session.info[_BATCH] = (events, entries)
    try:
        yield
    finally:
        session.info.pop(_BATCH, None)
    connection = session.connection()
    if events:
        connection.execute(OutboxEvent.__table__.insert(), events)
    if entries:
        connection.execute(AuditEntry.__table__.insert(), entries)
