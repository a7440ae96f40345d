"""A vendor's ``WebhookEndpoint``, each ``WebhookDelivery`` of an event to it, and the
``WebhookAttempt`` log of every time it was sent and what came back."""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cmw.db import Timestamps, UUIDPrimaryKey, str_enum, utcnow
from cmw.extensions import db


class DeliveryState(enum.StrEnum):
    #: waiting for its next attempt (``next_attempt_at``)
    PENDING = "pending"
    #: the endpoint answered 2xx
    DELIVERED = "delivered"
    #: no 2xx answer within the retry window (a day); the vendor may replay it
    FAILED = "failed"


class WebhookEndpoint(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "webhook_endpoints"

    #: the vendor organisation whose products' events it receives
    vendor_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    #: an https:// URL
    url: Mapped[str] = mapped_column(sa.String(2000))
    description: Mapped[str] = mapped_column(sa.String(200), default="")
    #: the event types it receives; empty = every type
    topics: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    #: the signing secret, sealed (Fernet); shown to the vendor once, at creation or rotation
    secret_sealed: Mapped[str] = mapped_column(sa.Text)
    #: paused endpoints get no new deliveries
    active: Mapped[bool] = mapped_column(default=True)
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))


class WebhookDelivery(UUIDPrimaryKey, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # one delivery per event and endpoint, however often the event arrives
        sa.UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
        sa.Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        sa.Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
    )

    endpoint_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    #: the event's id (outbox message id); receivers deduplicate on it
    event_id: Mapped[str] = mapped_column(sa.String(100))
    #: the event type, for example ``order.placed``
    topic: Mapped[str] = mapped_column(sa.String(100))
    #: the exact JSON body sent, the same bytes at every attempt and replay
    body: Mapped[str] = mapped_column(sa.Text)
    state: Mapped[DeliveryState] = mapped_column(
        str_enum(DeliveryState, "webhook_delivery_state"), default=DeliveryState.PENDING
    )
    #: attempts made so far, replays included
    attempts: Mapped[int] = mapped_column(default=0)
    #: when it is next due (UTC); while an attempt is in flight, when that claim lapses
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(default=utcnow)
    #: retries stop after this moment (a day after the first send or the last replay)
    retry_until: Mapped[dt.datetime]
    #: HTTP status of the last answer; NULL when there was none (refused, timed out)
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[dt.datetime | None]

    endpoint: Mapped[WebhookEndpoint] = relationship(lazy="joined")
    log: Mapped[list[WebhookAttempt]] = relationship(
        order_by="WebhookAttempt.attempted_at", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def data(self) -> dict[str, Any]:
        """The body as JSON."""
        value: dict[str, Any] = json.loads(self.body)
        return value


class WebhookAttempt(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: the HTTP status; NULL when no answer came
    status: Mapped[int | None]
    #: why it failed, when it did (connection refused, timeout, a refused address)
    error: Mapped[str | None] = mapped_column(sa.Text)
    #: how long the call took, in milliseconds
    duration_ms: Mapped[int] = mapped_column(default=0)
    #: the first 500 characters of the answer's body
    response: Mapped[str | None] = mapped_column(sa.Text)
