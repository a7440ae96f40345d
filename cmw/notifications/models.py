"""A ``Notification`` in a user's notification centre."""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from cmw.db import UUIDPrimaryKey, utcnow
from cmw.extensions import db


class Notification(UUIDPrimaryKey, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "notifications"
    __table_args__ = (
        # One notification per event and user, even if the event is delivered twice.
        sa.UniqueConstraint("user_id", "event_id", name="uq_notifications_user_event"),
        sa.Index("ix_notifications_user_unread", "user_id", "read_at", "created_at"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    marketplace_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("marketplaces.id", ondelete="CASCADE")
    )
    #: the event it tells about (outbox message id)
    event_id: Mapped[str] = mapped_column(sa.String(100))
    #: the event topic, for example ``subscription.trial_ending``
    kind: Mapped[str] = mapped_column(sa.String(100))
    title: Mapped[str] = mapped_column(sa.String(200))
    body: Mapped[str] = mapped_column(sa.Text)
    #: where in the control panel to look (relative URL)
    link: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: when the user read it (UTC); NULL while unread
    read_at: Mapped[dt.datetime | None]
