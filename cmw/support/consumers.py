"""``TicketMail`` sends one ticket e-mail per ``ticket.email`` event (so a failing SMTP
server is retried for that e-mail alone); ``TicketForwarder`` hands the customer's
messages to the marketplace's external ticket system, by signed webhook and/or e-mail.
A failure raises, and the consumer base retries with back-off."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from sqlalchemy.orm import Session

from cmw.accounts.models import User
from cmw.crypto import Sealer
from cmw.events.consumer import Event, EventConsumer, as_uuid
from cmw.mail import Mailer
from cmw.marketplaces.models import Marketplace
from cmw.marketplaces.service import address
from cmw.support import mail
from cmw.support.models import Ticket, TicketMessage
from cmw.support.service import forwarding
from cmw.webhooks.service import Job, Sender


class _TicketConsumer(EventConsumer):
    def __init__(self, mailer: Mailer, base_url: str, mail_from: str, support_address: str) -> None:
        self.mailer, self.base_url, self.mail_from = mailer, base_url, mail_from
        self.support_address = support_address

    def _load(self, session: Session, event: Event) -> tuple[Ticket, TicketMessage, Marketplace] | None:
        ticket_id, message_id = (
            as_uuid(event.payload.get("ticket_id")),
            as_uuid(event.payload.get("message_id")),
        )
        ticket = session.get(Ticket, ticket_id) if ticket_id else None
        message = session.get(TicketMessage, message_id) if message_id else None
        marketplace = session.get(Marketplace, ticket.marketplace_id) if ticket else None
        if ticket is None or message is None or marketplace is None:
            return None  # deleted since: nothing to tell
        return ticket, message, marketplace

    def _compose(
        self, ticket: Ticket, message: TicketMessage, marketplace: Marketplace, to: tuple[str, str]
    ) -> Any:
        return mail.compose(
            ticket,
            message,
            to=to,
            marketplace=marketplace,
            mail_from=self.mail_from,
            support_address=self.support_address,
            link=f"{address(marketplace, self.base_url)}/account/tickets/{ticket.id}",
        )


class TicketMail(_TicketConsumer):
    name = "ticket-mail"
    topics = ("ticket.email",)
    max_attempts = 8
    retry_delay = 1.0

    def handle(self, session: Session, event: Event) -> None:
        loaded = self._load(session, event)
        user_id = as_uuid(event.payload.get("user_id"))
        user = session.get(User, user_id) if user_id else None
        if loaded is None or user is None or not user.is_active:
            return
        self.mailer.send(self._compose(*loaded, to=(user.name, user.email)))


class TicketForwarder(_TicketConsumer):
    name = "ticket-forward"
    topics = ("ticket.forward",)
    max_attempts = 10
    retry_delay = 2.0

    def __init__(
        self,
        mailer: Mailer,
        base_url: str,
        mail_from: str,
        support_address: str,
        sealer: Sealer,
        sender: Sender,
    ) -> None:
        super().__init__(mailer, base_url, mail_from, support_address)
        self.sealer, self.sender = sealer, sender

    def handle(self, session: Session, event: Event) -> None:
        loaded = self._load(session, event)
        settings = forwarding(session, loaded[0].marketplace_id) if loaded else None
        if loaded is None or settings is None:
            return
        ticket, message, marketplace = loaded
        if settings.forward_url and settings.forward_secret_sealed:
            body = json.dumps(self.document(ticket, message, marketplace, event.id), separators=(",", ":"))
            result = self.sender.send(
                Job(
                    as_uuid(event.id) or uuid.uuid4(),
                    settings.forward_url,
                    self.sealer.open(settings.forward_secret_sealed),
                    "ticket.message",
                    body,
                )
            )
            if not result.ok:
                raise RuntimeError(f"forwarding to {settings.forward_url}: {result.error or result.status}")
        if settings.forward_email:
            self.mailer.send(
                self._compose(ticket, message, marketplace, to=("Support desk", settings.forward_email))
            )

    def document(
        self, ticket: Ticket, message: TicketMessage, marketplace: Marketplace, event_id: str
    ) -> dict[str, Any]:
        """What the external system is sent: the ticket, the new message, how to answer."""
        home = address(marketplace, self.base_url)

        def at(moment: dt.datetime) -> str:
            return moment.isoformat()

        return {
            "id": event_id,
            "type": "ticket.message",
            "ticket": {
                "id": str(ticket.id),
                "ref": ticket.ref,
                "subject": ticket.subject,
                "status": str(ticket.status),
                "customer_id": str(ticket.customer_id),
                "subscription_id": str(ticket.subscription_id) if ticket.subscription_id else None,
                "deployment_id": str(ticket.deployment_id) if ticket.deployment_id else None,
                "url": f"{home}/account/tickets/{ticket.id}",
            },
            "message": {
                "id": str(message.id),
                "author": {
                    "email": message.author_email,
                    "name": message.author_name,
                    "role": str(message.author_role),
                },
                "body": message.body,
                "created_at": at(message.created_at),
                "attachments": [
                    {"filename": a.filename, "content_type": a.content_type, "size": a.size}
                    for a in message.attachments
                ],
            },
            "reply": {
                "api": f"{home}/api/v1/support/tickets/{ticket.id}/messages",
                "email": mail.reply_address(self.support_address, ticket),
            },
        }
