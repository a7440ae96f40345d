"""Writing events: call :func:`emit` inside the transaction that makes the change."""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy.orm import Session

from cmw.audit import events as audit
from cmw.events.models import OutboxEvent

_TOPIC = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+$")


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
    # The id is set here so callers have it at once; the row goes in with the session's next
    # flush, together with the change it describes (several events, one INSERT).
    event = OutboxEvent(id=uuid.uuid4(), topic=topic, payload=payload, marketplace_id=marketplace_id)
    session.add(event)
    audit.from_event(session, topic, payload, marketplace_id)
    return event
