"""Writing events: call :func:`emit` inside the transaction that makes the change."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session, SessionTransaction

from cmw.audit import events as audit
from cmw.audit.models import AuditEntry
from cmw.db import utcnow
from cmw.events.models import OutboxEvent

_TOPIC = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+$")
#: session.info key of the open :func:`together` block's rows
_BATCH = "mercato.events_together"


@dataclasses.dataclass(frozen=True, slots=True)
class Emitted:
    """What a caller may read of an event it emitted: a copy, never added to a session."""

    id: uuid.UUID
    topic: str
    payload: dict[str, Any]


@dataclasses.dataclass(slots=True)
class _Batch:
    """The rows of an open :func:`together` block, and the transaction they belong to."""

    transaction: SessionTransaction | None
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    entries: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _open_batch(session: Session) -> _Batch | None:
    """The open block's rows, if the session is still in the transaction (or savepoint) the
    block began in: what is emitted inside a later savepoint goes through the unit of work,
    which forgets it if that savepoint rolls back."""
    batch: _Batch | None = session.info.get(_BATCH)
    if batch is None or _current(session) is not batch.transaction:
        return None
    return batch


def _current(session: Session) -> SessionTransaction | None:
    return session.get_nested_transaction() or session.get_transaction()


def emit(
    session: Session,
    topic: str,
    payload: dict[str, Any],
    *,
    marketplace_id: uuid.UUID | None = None,
) -> Emitted:
    """Add an event to the outbox; it is published only if the session commits."""
    if not _TOPIC.match(topic):
        raise ValueError(f"event topic {topic!r} is not like 'entity.happened'")
    event_id = uuid.uuid4()
    batch = _open_batch(session)
    if batch is not None:
        now = utcnow()
        batch.events.append(
            {
                "id": event_id,
                "topic": topic,
                "payload": payload,
                "marketplace_id": marketplace_id,
                "created_at": now,
                "published_at": None,
                "attempts": 0,
            }
        )
        entry = audit.entry_for_event(topic, payload, marketplace_id, now)
        if entry is not None:
            batch.entries.append(entry)
    else:
        # The id is set here so callers have it at once; the row goes in with the session's
        # next flush, together with the change it describes (several events, one INSERT).
        session.add(OutboxEvent(id=event_id, topic=topic, payload=payload, marketplace_id=marketplace_id))
        audit.from_event(session, topic, payload, marketplace_id)
    return Emitted(event_id, topic, payload)


def add_audit_row(session: Session, values: dict[str, Any]) -> bool:
    """Add an audit log row (column values) to the session's open :func:`together` block, to
    be written with its events; False if there is none."""
    batch = _open_batch(session)
    if batch is None:
        return False
    batch.entries.append(values)
    return True


@contextlib.contextmanager
def together(session: Session) -> Iterator[None]:
    """Events emitted in the block (and their audit entries) are written when it ends, one
    ``INSERT`` for the outbox and one for the audit log, in the session's transaction.

    For the busiest paths that emit several events at once (an order emits three): rows
    written through Core cost a third of what the unit of work spends on them. They are in
    the transaction as soon as the block ends, so they commit or roll back with it. A block
    left by an exception writes nothing of its own, a nested one included (the outermost
    writes the rest); what is emitted inside a savepoint begun in the block goes through the
    unit of work as usual. The block must end in the transaction it began in: committing or
    rolling back inside it is a programming error, and raises.
    """
    outer: _Batch | None = session.info.get(_BATCH)
    if outer is not None:
        marks = len(outer.events), len(outer.entries)
        try:
            yield
        except BaseException:
            del outer.events[marks[0] :], outer.entries[marks[1] :]
            raise
        return
    session.connection()  # the transaction has begun: the rows belong to it
    batch = _Batch(_current(session))
    session.info[_BATCH] = batch
    try:
        yield
    finally:
        session.info.pop(_BATCH, None)
    if _current(session) is not batch.transaction:
        raise RuntimeError("a together() block must end in the transaction it began in")
    connection = session.connection()
    if batch.events:
        connection.execute(OutboxEvent.__table__.insert(), batch.events)
    if batch.entries:
        connection.execute(AuditEntry.__table__.insert(), batch.entries)
