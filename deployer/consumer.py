"""``DeploymentRequests``: turns ``deployment.requested`` into a deployment row, and the end
of a subscription (``deployment.cancelled``, ``subscription.cancelled``,
``subscription.expired``) into its removal, and an unpaid (``subscription.suspended``)
or paid (``subscription.resumed``) subscription into stopping or starting its VM, and a
vendor user's changed SSH keys (``ssh_key.changed``) into new support keys on the vendor's
instances. The
engine does the provider work, outside the message handling, so a slow cloud never holds
up the worker's other consumers."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from cmw.events.consumer import Event, EventConsumer
from deployer import engine, service, support


class DeploymentRequests(EventConsumer):
    name = "deployer"
    batch_size = 10  # database changes only
    topics = (
        "deployment.requested",
        "deployment.cancelled",
        "subscription.cancelled",
        "subscription.expired",
        "subscription.suspended",
        "subscription.resumed",
        "ssh_key.changed",
    )

    def handle(self, session: Session, event: Event) -> None:
        if event.topic == "deployment.requested":
            service.request_deployment(session, event.payload, event.marketplace_id)
        elif event.topic == "ssh_key.changed":
            support.keys_changed(session, uuid.UUID(str(event.payload["user_id"])))
        else:
            raw = event.payload.get("subscription_id")
            if not raw:
                return
            subscription_id = uuid.UUID(str(raw))
            if event.topic in ("subscription.suspended", "subscription.resumed"):
                service.request_suspension(
                    session, subscription_id, suspend=event.topic == "subscription.suspended"
                )
            else:
                service.request_removal(session, subscription_id)
        engine.WAKE.set()  # the engine looks again (it also polls)
