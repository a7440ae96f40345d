"""``VendorWebhooks``: turns each event about a vendor's product into deliveries to the
vendor's endpoints, in the consumer's transaction; the worker's sender posts them."""

from __future__ import annotations

from sqlalchemy.orm import Session

from cmw.events.consumer import Event, EventConsumer
from cmw.webhooks.service import TOPICS, fan_out


class VendorWebhooks(EventConsumer):
    name = "vendor-webhooks"
    batch_size = 10  # database changes only
    topics = TOPICS

    def handle(self, session: Session, event: Event) -> None:
        fan_out(session, event.id, event.topic, event.payload, event.marketplace_id)
