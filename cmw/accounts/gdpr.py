"""A person's rights over their data (GDPR articles 15, 17 and 20).

``export`` gathers everything the platform holds about a user, and only about them and
the customer organisations they buy for, into a ZIP of JSON files (one per kind of
record, with a ``README.txt``). Secrets are never in it: password and token hashes,
sealed passwords and credentials stay out.

``erase`` removes or anonymises the user's personal data in one transaction and records
that it happened (:class:`~cmw.accounts.models.Erasure`). Invoices and the orders they
come from are kept as the law requires (an invoice keeps the buyer as billed, frozen at
issue); the user row stays, anonymised, because they name it. The audit log is append-only
(the platform's security record, kept for that legitimate interest) and is not changed.
Refused while a customer organisation only this user acts for still has live
subscriptions.
"""

from __future__ import annotations

import datetime as dt
import enum
import io
import json
import uuid
import zipfile
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.accounts.models import (
    ApiToken,
    Erasure,
    ExternalIdentity,
    Membership,
    Organisation,
    Role,
    SshKey,
    SsoSession,
    User,
)
from cmw.audit.models import AuditEntry
from cmw.billing.models import Invoice
from cmw.catalog.models import Review
from cmw.db import utcnow
from cmw.events.service import emit
from cmw.notifications.models import Notification
from cmw.orders.models import Order, Subscription, SubscriptionStatus
from cmw.support.models import Ticket, TicketMessage
from deployer.models import Deployment

#: never exported: hashes, sealed secrets, host keys
SECRET_COLUMNS = frozenset(
    {"password_hash", "token_hash", "password_sealed", "credentials_sealed", "private_key_sealed", "host_key"}
)
LIVE = (SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)
ERASED_NAME = "Erased user"


class ErasureRefused(ValueError):
    """The data cannot be erased yet; the message says what to do first."""


def _value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _row(obj: Any) -> dict[str, Any]:
    """A stored record's columns, as JSON, without its secrets."""
    mapper = sa.inspect(obj).mapper
    return {
        attr.key: _value(getattr(obj, attr.key))
        for attr in mapper.column_attrs
        if attr.key not in SECRET_COLUMNS
    }


def customer_organisations(session: Session, user_id: uuid.UUID) -> list[uuid.UUID]:
    found = session.scalars(
        sa.select(Membership.organisation_id).where(
            Membership.user_id == user_id, Membership.role == Role.CUSTOMER
        )
    )
    return [org for org in found if org is not None]


def export(session: Session, user: User) -> bytes:
    """The ZIP archive of everything held about ``user``."""
    orgs = customer_organisations(session, user.id)

    def rows(statement: Any) -> list[dict[str, Any]]:
        return [_row(r) for r in session.scalars(statement)]

    sections: dict[str, Any] = {
        "profile": _row(user),
        "memberships": rows(sa.select(Membership).where(Membership.user_id == user.id)),
        "organisations": rows(sa.select(Organisation).where(Organisation.id.in_(orgs))),
        "ssh_keys": rows(sa.select(SshKey).where(SshKey.user_id == user.id)),
        "api_tokens": rows(sa.select(ApiToken).where(ApiToken.user_id == user.id)),
        "sign_in_identities": rows(sa.select(ExternalIdentity).where(ExternalIdentity.user_id == user.id)),
        "notifications": rows(sa.select(Notification).where(Notification.user_id == user.id)),
        "orders": rows(
            sa.select(Order)
            .where(sa.or_(Order.placed_by_id == user.id, Order.customer_id.in_(orgs)))
            .order_by(Order.created_at)
        ),
        "subscriptions": rows(
            sa.select(Subscription)
            .where(Subscription.customer_id.in_(orgs))
            .order_by(Subscription.created_at)
        ),
        "instances": rows(
            sa.select(Deployment).where(Deployment.customer_id.in_(orgs)).order_by(Deployment.created_at)
        ),
        "invoices": rows(
            sa.select(Invoice)
            .where(Invoice.customer_id.in_(orgs), Invoice.number.is_not(None))
            .order_by(Invoice.created_at)
        ),
        "support_tickets": rows(sa.select(Ticket).where(Ticket.customer_id.in_(orgs))),
        "support_messages": rows(
            sa.select(TicketMessage).where(
                sa.or_(
                    TicketMessage.author_id == user.id,
                    TicketMessage.ticket_id.in_(sa.select(Ticket.id).where(Ticket.customer_id.in_(orgs))),
                )
            )
        ),
        "reviews": rows(sa.select(Review).where(Review.author_id == user.id)),
        "activity": rows(
            sa.select(AuditEntry).where(AuditEntry.actor_id == user.id).order_by(AuditEntry.id).limit(10_000)
        ),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "README.txt",
            f"Everything Mercato holds about {user.email}, exported {utcnow().isoformat()}.\n"
            "One JSON file per kind of record; times are UTC (ISO 8601), amounts decimal strings.\n"
            "Secrets (password and token hashes, one-time passwords) are never exported.\n",
        )
        for name, content in sections.items():
            archive.writestr(f"{name}.json", json.dumps(content, indent=2, sort_keys=True, default=str))
    return buffer.getvalue()


def _sole_customer_orgs(session: Session, user_id: uuid.UUID) -> list[uuid.UUID]:
    """The customer organisations no one but ``user_id`` acts for."""
    return [
        org
        for org in customer_organisations(session, user_id)
        if not session.scalar(
            sa.select(sa.func.count())
            .select_from(Membership)
            .where(Membership.organisation_id == org, Membership.user_id != user_id)
        )
    ]


def erase(session: Session, user: User, now: dt.datetime | None = None) -> Erasure:
    """Erase ``user``'s personal data; :class:`ErasureRefused` (nothing changed) while an
    organisation only they act for has live subscriptions."""
    now = now or utcnow()
    session.refresh(user, with_for_update=True)
    if user.erased_at is not None:
        raise ErasureRefused("this account's data is erased already")
    sole = _sole_customer_orgs(session, user.id)
    live = session.scalar(
        sa.select(sa.func.count())
        .select_from(Subscription)
        .where(Subscription.customer_id.in_(sole), Subscription.status.in_(LIVE))
    )
    if live:
        raise ErasureRefused(
            f"{live} subscription(s) of your organisation are still active: cancel them first "
            "(your data is erased once nothing runs for you)"
        )
    old_email = user.email
    pseudonym = f"erased-{user.id.hex[:12]}"
    summary: dict[str, Any] = {
        "kept": "invoices and the orders they come from, as the law requires; the append-only "
        "audit log, the platform's security record"
    }

    def count(name: str, result: Any) -> None:
        summary[name] = int(result.rowcount or 0)

    from cmw.accounts import keys

    for key in session.scalars(sa.select(SshKey).where(SshKey.user_id == user.id)).all():
        keys.remove_key(session, key)  # also off the instances where it gave vendor access
    count("api_tokens_deleted", session.execute(sa.delete(ApiToken).where(ApiToken.user_id == user.id)))
    count(
        "sign_in_identities_deleted",
        session.execute(sa.delete(ExternalIdentity).where(ExternalIdentity.user_id == user.id)),
    )
    session.execute(sa.delete(SsoSession).where(SsoSession.user_id == user.id))
    count(
        "notifications_deleted",
        session.execute(sa.delete(Notification).where(Notification.user_id == user.id)),
    )
    count("memberships_removed", session.execute(sa.delete(Membership).where(Membership.user_id == user.id)))
    count(
        "support_messages_anonymised",
        session.execute(
            sa.update(TicketMessage)
            .where(sa.or_(TicketMessage.author_id == user.id, TicketMessage.author_email == old_email))
            .values(author_email=f"{pseudonym}@erased.invalid", author_name=ERASED_NAME)
        ),
    )
    count(
        "reviews_anonymised",
        session.execute(sa.update(Review).where(Review.author_id == user.id).values(author_id=None)),
    )
    count(
        "organisations_anonymised",
        session.execute(
            sa.update(Organisation)
            .where(Organisation.id.in_(sole))
            .values(
                name="Erased customer",
                legal_name="Erased customer",
                vat_number=None,
                address_line1="",
                address_line2="",
                postal_code="",
                city="",
                region="",
                billing_email=None,
            )
        ),
    )
    user.email = f"{pseudonym}@erased.invalid"
    user.name = ERASED_NAME
    user.password_hash = None
    user.email_verified = False
    user.is_active = False
    user.language = "en"
    user.session_generation += 1
    user.erased_at = now
    record = Erasure(user_id=user.id, requested_at=now, summary=summary)
    session.add(record)
    session.flush()
    emit(session, "account.erased", {"user_id": str(user.id), "erasure_id": str(record.id)})
    return record
