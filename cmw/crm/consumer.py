"""``CrmSync``: keeps HubSpot in step with the event stream (customers, their users, their
subscriptions). Registered only when ``MERCATO_HUBSPOT_TOKEN`` is set."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session

from cmw.crm import service
from cmw.events.consumer import Event, EventConsumer, as_uuid

log = logging.getLogger(__name__)


class CrmSync(EventConsumer):
    name = "crm-sync"
    topics = ("organisation.created", "user.signed_up", "membership.granted", "subscription.*")
    max_attempts = 10
    retry_delay = 2.0

    def __init__(self, crm: service.HubSpot) -> None:
        self.crm = crm

    def handle(self, session: Session, event: Event) -> None:
        try:
            if subscription_id := as_uuid(event.payload.get("subscription_id")):
                service.sync_deal(session, self.crm, subscription_id)
            elif organisation_id := as_uuid(event.payload.get("organisation_id")) or self._of_membership(
                event
            ):
                service.sync_company(session, self.crm, organisation_id)
        except service.CrmRejected as exc:
            # the same data would be refused again: on record (crm_calls), not retried
            log.error("CRM refused %s %s: %s", event.topic, event.id, exc)

    @staticmethod
    def _of_membership(event: Event) -> uuid.UUID | None:
        if event.topic != "membership.granted" or event.payload.get("role") != "customer":
            return None
        return as_uuid(event.payload.get("organisation_id"))
