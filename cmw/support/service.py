"""Support tickets: opening one about a subscription or an instance, answering in the
thread, attachments, closing, and who may see and write what.

The customer's organisation opens a ticket; the vendor of the product it is about answers
(a ticket about nothing bought goes to the marketplace's admins, who may also answer any
ticket of their marketplace). Each message is written with its attachments in one
transaction, and events in the same transaction ask for the e-mails (one per recipient,
``ticket.email``) and, for the customer's messages, the forwarding to the marketplace's
external ticket system (``ticket.forward``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cassetto import Storage
from cassetto.files import CheckedFile
from cmw.accounts import service as accounts
from cmw.accounts.models import Membership, Role, User
from cmw.catalog.service import vendor_of
from cmw.crypto import Sealer
from cmw.db import utcnow
from cmw.events.service import emit
from cmw.orders.models import Subscription
from cmw.outbound import check_url
from cmw.support.models import (
    AuthorRole,
    SupportSettings,
    Ticket,
    TicketAttachment,
    TicketMessage,
    TicketStatus,
)
from cmw.webhooks.service import new_secret
from deployer import service as deployments

MAX_ATTACHMENTS = 5
#: bytes an attachment may have
MAX_ATTACHMENT = 10 * 1024 * 1024
MAX_BODY = 20_000
_REF_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"


class TicketError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


@dataclasses.dataclass(frozen=True)
class Author:
    user_id: uuid.UUID | None
    email: str
    name: str
    role: AuthorRole

    @classmethod
    def of(cls, user: User, role: AuthorRole) -> Author:
        return cls(user.id, user.email, user.name, role)


def participant(ticket: Ticket, memberships: Iterable[Membership]) -> AuthorRole | None:
    """How someone with these grants (in the ticket's marketplace) takes part, if at all."""
    held = list(memberships)
    if any(m.role is Role.CUSTOMER and m.organisation_id == ticket.customer_id for m in held):
        return AuthorRole.CUSTOMER
    if ticket.vendor_id and any(
        m.role is Role.VENDOR and m.organisation_id == ticket.vendor_id for m in held
    ):
        return AuthorRole.VENDOR
    if any(m.role is Role.ADMIN for m in held):
        return AuthorRole.ADMIN
    return None


def visible(marketplace_id: uuid.UUID, memberships: Iterable[Membership]) -> sa.Select[Any]:
    """The tickets of the marketplace someone with these grants may read."""
    held = list(memberships)
    stmt = sa.select(Ticket).where(Ticket.marketplace_id == marketplace_id)
    if any(m.role is Role.ADMIN for m in held):
        return stmt
    customers = [m.organisation_id for m in held if m.role is Role.CUSTOMER and m.organisation_id]
    vendors = [m.organisation_id for m in held if m.role is Role.VENDOR and m.organisation_id]
    return stmt.where(sa.or_(Ticket.customer_id.in_(customers), Ticket.vendor_id.in_(vendors)))


def _text(field: str, value: str, limit: int) -> str:
    value = (value or "").strip()
    if not value:
        raise TicketError(field, "say something: it may not be empty")
    if len(value) > limit:
        raise TicketError(field, f"at most {limit:,} characters")
    return value


def _about(
    session: Session,
    marketplace_id: uuid.UUID,
    customer_id: uuid.UUID,
    subscription_id: uuid.UUID | None,
    deployment_id: uuid.UUID | None,
) -> tuple[uuid.UUID | None, uuid.UUID | None, uuid.UUID | None]:
    """(subscription, deployment, vendor) of what the ticket is about, checked as the customer's."""
    if deployment_id is not None:
        deployment = deployments.get(session, deployment_id)
        if deployment is None or deployment.customer_id != customer_id:
            raise TicketError("deployment_id", "not one of your instances")
        if subscription_id is not None and subscription_id != deployment.subscription_id:
            raise TicketError("deployment_id", "that instance belongs to another subscription")
        subscription_id = deployment.subscription_id
    if subscription_id is None:
        return None, None, None
    subscription = session.get(Subscription, subscription_id)
    if (
        subscription is None
        or subscription.customer_id != customer_id
        or subscription.marketplace_id != marketplace_id
    ):
        raise TicketError("subscription_id", "not one of your subscriptions")
    return subscription.id, deployment_id, vendor_of(session, subscription.product_id)


def open_ticket(
    session: Session,
    storage: Storage,
    *,
    marketplace_id: uuid.UUID,
    customer_id: uuid.UUID,
    author: Author,
    subject: str,
    body: str,
    subscription_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
    files: Sequence[CheckedFile] = (),
    via: str = "api",
) -> Ticket:
    subject = _text("subject", subject, 200)
    subscription_id, deployment_id, vendor_id = _about(
        session, marketplace_id, customer_id, subscription_id, deployment_id
    )
    ticket = Ticket(
        id=uuid.uuid4(),
        ref="T-" + "".join(secrets.choice(_REF_ALPHABET) for _ in range(8)),
        marketplace_id=marketplace_id,
        customer_id=customer_id,
        opened_by_id=author.user_id,
        subject=subject,
        status=TicketStatus.OPEN,
        subscription_id=subscription_id,
        deployment_id=deployment_id,
        vendor_id=vendor_id,
        reply_token=secrets.token_urlsafe(18),
    )
    session.add(ticket)
    session.flush()
    add_message(session, storage, ticket, author, body, files=files, via=via, opening=True)
    return ticket


def add_message(
    session: Session,
    storage: Storage,
    ticket: Ticket,
    author: Author,
    body: str,
    *,
    files: Sequence[CheckedFile] = (),
    via: str = "api",
    email_message_id: str | None = None,
    opening: bool = False,
) -> TicketMessage:
    """A message in the thread, with its files; the ticket waits for the other side."""
    body = _text("body", body, MAX_BODY)
    if len(files) > MAX_ATTACHMENTS:
        raise TicketError("files", f"at most {MAX_ATTACHMENTS} attachments a message")
    now = utcnow()
    message = TicketMessage(
        id=uuid.uuid4(),
        ticket_id=ticket.id,
        author_id=author.user_id,
        author_email=author.email,
        author_name=author.name,
        author_role=author.role,
        body=body,
        via=via,
        email_message_id=email_message_id,
        created_at=now,
    )
    session.add(message)
    for checked in files:
        attachment_id = uuid.uuid4()
        key = f"tickets/{ticket.id}/{attachment_id}"
        # Bytes first, rows second: a row never names a file that is not stored.
        storage.put(key, checked.data, checked.content_type)
        message.attachments.append(
            TicketAttachment(
                id=attachment_id,
                message_id=message.id,
                filename=checked.filename,
                content_type=checked.content_type,
                size=checked.size,
                sha256=hashlib.sha256(checked.data).hexdigest(),
                key=key,
            )
        )
    ticket.status = TicketStatus.OPEN if author.role is AuthorRole.CUSTOMER else TicketStatus.ANSWERED
    ticket.closed_at = None
    ticket.updated_at = now
    session.flush()
    payload = {
        "ticket_id": str(ticket.id),
        "message_id": str(message.id),
        "customer_id": str(ticket.customer_id),
    }
    emit(
        session,
        "ticket.opened" if opening else "ticket.message_added",
        {**payload, "author_role": str(author.role)},
        marketplace_id=ticket.marketplace_id,
    )
    for user in recipients(session, ticket, author):
        emit(
            session,
            "ticket.email",
            {**payload, "user_id": str(user.id)},
            marketplace_id=ticket.marketplace_id,
        )
    if author.role is AuthorRole.CUSTOMER and forwarding(session, ticket.marketplace_id) is not None:
        emit(session, "ticket.forward", payload, marketplace_id=ticket.marketplace_id)
    return message


def recipients(session: Session, ticket: Ticket, author: Author) -> list[User]:
    """Who is told of a message: the other side of the thread, never its author."""
    if author.role is AuthorRole.CUSTOMER:
        users = (
            accounts.members(session, ticket.vendor_id, Role.VENDOR)
            if ticket.vendor_id
            else accounts.admins_of(session, ticket.marketplace_id)
        )
    else:
        users = accounts.members(session, ticket.customer_id, Role.CUSTOMER)
    return [u for u in users if u.id != author.user_id]


def close(session: Session, ticket: Ticket, author: Author) -> Ticket:
    if ticket.status is not TicketStatus.CLOSED:
        ticket.status = TicketStatus.CLOSED
        ticket.closed_at = utcnow()
        session.flush()
        emit(
            session,
            "ticket.closed",
            {"ticket_id": str(ticket.id), "customer_id": str(ticket.customer_id), "by": str(author.role)},
            marketplace_id=ticket.marketplace_id,
        )
    return ticket


def attachment_of(session: Session, ticket: Ticket, attachment_id: uuid.UUID) -> TicketAttachment | None:
    return session.scalar(
        sa.select(TicketAttachment)
        .join(TicketMessage, TicketMessage.id == TicketAttachment.message_id)
        .where(TicketAttachment.id == attachment_id, TicketMessage.ticket_id == ticket.id)
    )


# ------------------------------------------------------------------ forwarding settings
def forwarding(session: Session, marketplace_id: uuid.UUID) -> SupportSettings | None:
    """The marketplace's forwarding, if it forwards anywhere."""
    found = session.get(SupportSettings, marketplace_id)
    if found is None or not (found.forward_url or found.forward_email):
        return None
    return found


def set_forwarding(
    session: Session,
    sealer: Sealer,
    marketplace_id: uuid.UUID,
    *,
    url: str | None,
    email: str | None,
    allow_private: bool,
) -> tuple[SupportSettings, str | None]:
    """Forward the marketplace's customer messages to ``url`` (an HTTPS webhook, signed like
    vendor webhooks) and/or ``email``; empty stops that kind. Returns the settings and, when
    the URL changed, its new signing secret (shown once; the old one stops signing).
    ``cmw.outbound.OutboundError`` when the URL may not be called."""
    found = session.get(SupportSettings, marketplace_id) or SupportSettings(marketplace_id=marketplace_id)
    url = (url or "").strip() or None
    if url is not None:
        url = check_url(url, allow_private=allow_private)
    secret = None
    if url != found.forward_url:
        found.forward_url = url
        found.forward_secret_sealed = None
        if url is not None:
            secret = new_secret()
            found.forward_secret_sealed = sealer.seal(secret)
    found.forward_email = (email or "").strip() or None
    session.add(found)
    session.flush()
    return found, secret
