"""A ``Ticket``, its ``TicketMessage`` thread and their ``TicketAttachment`` files, and a
marketplace's ``SupportSettings`` (where tickets are forwarded)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cmw.db import Timestamps, UUIDPrimaryKey, str_enum, utcnow
from cmw.extensions import db


class TicketStatus(enum.StrEnum):
    #: waiting for an answer from the vendor or support
    OPEN = "open"
    #: answered; waiting for the customer
    ANSWERED = "answered"
    #: settled; a new message from the customer opens it again
    CLOSED = "closed"


class AuthorRole(enum.StrEnum):
    CUSTOMER = "customer"
    VENDOR = "vendor"
    ADMIN = "admin"
    #: the external ticket system the marketplace forwards to
    EXTERNAL = "external"


class Ticket(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "tickets"
    __table_args__ = (sa.Index("ix_tickets_marketplace_status", "marketplace_id", "status", "updated_at"),)

    #: short reference people quote: ``T-7KQ2M9XD``
    ref: Mapped[str] = mapped_column(sa.String(12), unique=True)
    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="CASCADE"))
    #: the customer organisation that opened it
    customer_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    opened_by_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    subject: Mapped[str] = mapped_column(sa.String(200))
    status: Mapped[TicketStatus] = mapped_column(
        str_enum(TicketStatus, "ticket_status"), default=TicketStatus.OPEN
    )
    #: what it is about, when it is about something the customer bought
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("subscriptions.id", ondelete="SET NULL")
    )
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("deployments.id", ondelete="SET NULL")
    )
    #: the vendor of that product, who answers; NULL: the marketplace's admins answer
    vendor_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("organisations.id", ondelete="SET NULL"), index=True
    )
    #: secret part of the reply-to address of its e-mails (``support+t-<token>@...``)
    reply_token: Mapped[str] = mapped_column(sa.String(40), unique=True)
    closed_at: Mapped[dt.datetime | None]

    messages: Mapped[list[TicketMessage]] = relationship(
        order_by="TicketMessage.created_at", cascade="all, delete-orphan", passive_deletes=True
    )


class TicketMessage(UUIDPrimaryKey, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "ticket_messages"

    ticket_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    author_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    #: the author's e-mail address at the time
    author_email: Mapped[str] = mapped_column(sa.String(254))
    author_name: Mapped[str] = mapped_column(sa.String(200), default="")
    author_role: Mapped[AuthorRole] = mapped_column(str_enum(AuthorRole, "ticket_author_role"))
    body: Mapped[str] = mapped_column(sa.Text)
    #: ``api``, ``web`` or ``email``
    via: Mapped[str] = mapped_column(sa.String(10))
    #: the Message-ID of the e-mail it came in as, so a redelivered e-mail is added once
    email_message_id: Mapped[str | None] = mapped_column(sa.String(300), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    attachments: Mapped[list[TicketAttachment]] = relationship(
        order_by="TicketAttachment.filename",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
    )


class TicketAttachment(UUIDPrimaryKey, db.Model):  # type: ignore[name-defined,misc]
    """A file kept in the asset store under ``tickets/<ticket>/<attachment>``; served only
    to the ticket's participants, never through the public ``/assets`` route."""

    __tablename__ = "ticket_attachments"

    message_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("ticket_messages.id", ondelete="CASCADE"), index=True
    )
    filename: Mapped[str] = mapped_column(sa.String(200))
    #: judged from the content (cassetto.files)
    content_type: Mapped[str] = mapped_column(sa.String(100))
    #: bytes
    size: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    key: Mapped[str] = mapped_column(sa.String(300))


class SupportSettings(db.Model):  # type: ignore[name-defined,misc]
    """Where a marketplace forwards its tickets: an HTTPS webhook, an e-mail address, both or none."""

    __tablename__ = "support_settings"

    marketplace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("marketplaces.id", ondelete="CASCADE"), primary_key=True
    )
    forward_url: Mapped[str | None] = mapped_column(sa.String(2000))
    #: signing secret of the forward webhook, sealed
    forward_secret_sealed: Mapped[str | None] = mapped_column(sa.Text)
    #: an external ticket system's address; its replies come back into the thread
    forward_email: Mapped[str | None] = mapped_column(sa.String(254))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
