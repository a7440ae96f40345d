"""The ``usage`` queue: high-volume sources publish batches of usage records to RabbitMQ
instead of the HTTP API, and the worker counts them as the API does (once per record
``id``). A message is ``{"records": [...]}`` on the events exchange with the routing key
``usage.records``, a ``message_id`` and the ``marketplace_id`` header (see
:func:`publish`). Records rejected from a message are kept in ``usage_dead_letters``
with the reason, since nobody is waiting for an answer."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from kombu import Connection, Producer
from sqlalchemy.orm import Session

from cmw.events.consumer import Event, EventConsumer
from cmw.events.topology import EVENTS
from cmw.usage import ingest
from cmw.usage.models import UsageDeadLetter

log = logging.getLogger(__name__)
TOPIC = "usage.records"


class UsageRecords(EventConsumer):
    name = "usage"
    topics = (TOPIC,)

    def handle(self, session: Session, event: Event) -> None:
        records = event.payload.get("records")
        if event.marketplace_id is None or not isinstance(records, list):
            session.add(
                UsageDeadLetter(
                    marketplace_id=event.marketplace_id,
                    source="queue",
                    reason="a usage message is {records: [...]} with a marketplace_id header",
                    payload={"message_id": event.id, "body": event.payload},
                )
            )
            return
        scope = ingest.Scope(event.marketplace_id)
        accepted = duplicates = 0
        rejected: list[ingest.Rejection] = []
        for start in range(0, len(records), ingest.MAX_BATCH):
            result = ingest.ingest(session, scope, records[start : start + ingest.MAX_BATCH], source="queue")
            accepted += len(result.accepted)
            duplicates += len(result.duplicates)
            rejected += [dataclasses.replace(r, index=r.index + start) for r in result.rejected]
        for rejection in rejected:
            session.add(
                UsageDeadLetter(
                    marketplace_id=event.marketplace_id,
                    source="queue",
                    reason=rejection.reason,
                    payload={
                        "message_id": event.id,
                        "index": rejection.index,
                        "record": _jsonable(records[rejection.index]),
                    },
                )
            )
        if rejected:
            log.warning(
                "usage: message %s: %d records rejected (kept as dead letters)", event.id, len(rejected)
            )
        log.debug("usage: message %s: %d accepted, %d duplicates", event.id, accepted, duplicates)


def _jsonable(value: Any) -> Any:
    """The record as JSON can keep it (quantities parsed as Decimal become strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def publish(connection: Connection, marketplace_id: uuid.UUID, records: Sequence[dict[str, Any]]) -> str:
    """Send a batch to the ``usage`` queue (for sources in Python); the message id."""
    message_id = str(uuid.uuid4())
    producer = Producer(connection.default_channel, exchange=EVENTS)
    producer.publish(
        {"records": list(records)},
        routing_key=TOPIC,
        message_id=message_id,
        headers={"marketplace_id": str(marketplace_id), "topic": TOPIC},
        serializer="json",
        delivery_mode=2,
        declare=[EVENTS],
        retry=True,
    )
    return message_id
