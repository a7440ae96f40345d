"""Audit entries for events that change money or machines, written in the event's own
transaction (:func:`cmw.events.service.emit` calls :func:`from_event`). Imports nothing
of the services, which all emit events."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from flask import g, has_request_context, request
from sqlalchemy.orm import Session

from cmw.audit.models import AuditEntry
from cmw.db import utcnow

#: event topics that change money or machines, by prefix
AUDITED_TOPICS = (
    "order.",
    "subscription.",
    "deployment.",
    "invoice.",
    "payment.",
    "credit_note.",
    "billing.",
)
#: payload keys naming the object an event is about, most specific first
_OBJECT_KEYS = ("deployment_id", "subscription_id", "invoice_id", "order_id")


def _actor() -> tuple[uuid.UUID | None, str]:
    """The signed-in person of the request making the change, else the platform itself."""
    identity = g.get("identity") if has_request_context() else None
    return (identity.user.id, identity.user.email) if identity is not None else (None, "system")


def entry_for_event(
    topic: str, payload: dict[str, Any], marketplace_id: uuid.UUID | None, at: dt.datetime
) -> dict[str, Any] | None:
    """The audit log row (column values) for an event about money or machines, else None."""
    if not topic.startswith(AUDITED_TOPICS):
        return None
    # what it is about: the entity its topic names, else the most specific id it carries
    named = f"{topic.split('.', 1)[0]}_id"
    key = named if payload.get(named) else next((k for k in _OBJECT_KEYS if payload.get(k)), None)
    actor_id, actor = _actor()
    detail = {k: v for k, v in payload.items() if k in ("from", "to", "status", "total", "currency", "kind")}
    return {
        "at": at,
        "marketplace_id": marketplace_id,
        "actor_id": actor_id,
        "actor": actor,
        "action": topic,
        "object_type": key.removesuffix("_id") if key else None,
        "object_id": str(payload[key]) if key else None,
        "detail": detail,
        "ip": request.remote_addr if has_request_context() else None,
    }


def from_event(
    session: Session, topic: str, payload: dict[str, Any], marketplace_id: uuid.UUID | None
) -> None:
    """An entry for an event about money or machines, added to the event's transaction."""
    values = entry_for_event(topic, payload, marketplace_id, utcnow())
    if values is not None:
        session.add(AuditEntry(**values))
