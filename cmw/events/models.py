"""The outbox (events waiting to be published) and the consumers' applied-message log."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from cmw.db import utcnow
from cmw.extensions import db


class OutboxEvent(db.Model):  # type: ignore[name-defined,misc]
    """An event written in the same transaction as the change it describes."""

    __tablename__ = "outbox"
    __table_args__ = (
        # The relay only ever looks for unpublished rows in order.
        sa.Index(
            "ix_outbox_unpublished",
            "seq",
            postgresql_where=sa.text("published_at IS NULL"),
            sqlite_where=sa.text("published_at IS NULL"),
        ),
    )

    #: publication order; also the relay's cursor
    seq: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    #: the message id consumers deduplicate on
    id: Mapped[uuid.UUID] = mapped_column(unique=True, default=uuid.uuid4)
    #: routing key on the topic exchange, for example ``order.placed``
    topic: Mapped[str] = mapped_column(sa.String(100))
    #: the event body: ids and plain JSON values only
    payload: Mapped[dict[str, Any]]
    #: tenant the event concerns, when it concerns one
    marketplace_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("marketplaces.id", ondelete="SET NULL")
    )
    #: when the change happened (UTC)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: when the broker confirmed it (UTC); NULL while waiting
    published_at: Mapped[dt.datetime | None]
    #: failed publication attempts, for monitoring
    attempts: Mapped[int] = mapped_column(default=0)


class ProcessedMessage(db.Model):  # type: ignore[name-defined,misc]
    """A message a consumer has applied; inserted in the consumer's own transaction."""

    __tablename__ = "processed_messages"

    #: the consumer's stable name
    consumer: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    #: the message id (the outbox row id for events)
    message_id: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    #: when it was applied (UTC)
    processed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
