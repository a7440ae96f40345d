"""Raw usage: ``UsageRecord`` (every accepted record, kept for replay; on PostgreSQL a
table partitioned by month of the record's time) and ``UsageRecordId`` (the idempotency
keys seen, per marketplace and vendor: a record sent again is acknowledged and not counted
twice).

What billing rates is the hourly roll-up, :class:`cmw.billing.models.UsageHourly`,
written in the same transaction as the records it sums.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from cmw.billing.models import QUANTITY
from cmw.db import utcnow
from cmw.extensions import db

#: the longest idempotency key a source may send
MAX_RECORD_ID = 200


class UsageRecord(db.Model):  # type: ignore[name-defined,misc]
    """One accepted usage record. On PostgreSQL the table is partitioned by range of
    ``at`` (a partition per month, made ahead by the worker and on demand), so old months
    can be detached or dropped whole; the primary key includes ``at`` as partitioning
    requires (uniqueness of the key alone is kept by :class:`UsageRecordId`)."""

    __tablename__ = "usage_records"

    marketplace_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    #: the vendor of the subscription's product: each vendor's record ids are its own
    vendor_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    record_id: Mapped[str] = mapped_column(sa.String(MAX_RECORD_ID), primary_key=True)
    #: when the usage happened (UTC), the partition key
    at: Mapped[dt.datetime] = mapped_column(primary_key=True)
    subscription_id: Mapped[uuid.UUID] = mapped_column(index=True)
    metric: Mapped[str] = mapped_column(sa.String(100))
    quantity: Mapped[Decimal] = mapped_column(QUANTITY)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: "api", "queue" or "cloud"
    source: Mapped[str] = mapped_column(sa.String(10))
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class UsageRecordId(db.Model):  # type: ignore[name-defined,misc]
    """An idempotency key seen: inserted first, in the transaction that counts the record,
    so two sources sending the same record at once count it once (the second waits on
    the key, then finds it taken)."""

    __tablename__ = "usage_record_ids"

    marketplace_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    #: keys are per vendor: two vendors' sources may well both send a record "1"
    vendor_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    record_id: Mapped[str] = mapped_column(sa.String(MAX_RECORD_ID), primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class UsageDeadLetter(db.Model):  # type: ignore[name-defined,misc]
    """A record or cloud event that could not be counted, kept with the reason: records
    rejected from the ``usage`` queue (whose sender gets no answer) and cloud events with
    fields missing or of an unknown type. The consumer goes on with the next."""

    __tablename__ = "usage_dead_letters"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    marketplace_id: Mapped[uuid.UUID | None]
    #: "queue" or "cloud"
    source: Mapped[str] = mapped_column(sa.String(10))
    reason: Mapped[str] = mapped_column(sa.Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Budget(db.Model):  # type: ignore[name-defined,misc]
    """What a customer organisation means to spend in a month, in one currency; it is told
    when its live costs reach 80 % and 100 % of it (once each per month)."""

    __tablename__ = "budgets"

    organisation_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True
    )
    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="CASCADE"))
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(18, 4))
    currency: Mapped[str] = mapped_column(sa.String(3))
    #: the month ("2026-11") and the highest threshold (80 or 100) already told
    alerted_month: Mapped[str | None] = mapped_column(sa.String(7))
    alerted_percent: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CloudEvent(db.Model):  # type: ignore[name-defined,misc]
    """A cloud's own event as it arrived (Apache CloudStack's event bus), kept for replay;
    ``key`` (the hash of its body) makes a redelivered or repeated event one row."""

    __tablename__ = "cloud_events"
    __table_args__ = (sa.Index("ix_cloud_events_resource", "resource_uuid", "occurred_at"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    source: Mapped[str] = mapped_column(sa.String(20))
    event_type: Mapped[str] = mapped_column(sa.String(60))
    status: Mapped[str] = mapped_column(sa.String(20))
    resource_uuid: Mapped[str] = mapped_column(sa.String(255))
    occurred_at: Mapped[dt.datetime]
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    body: Mapped[dict[str, Any]] = mapped_column(default=dict)


class CloudResourceHour(db.Model):  # type: ignore[name-defined,misc]
    """The time-based usage derived from a cloud resource's events, per hour: what the
    adapter has added to ``usage_hourly`` for it, so a late or repeated event changes the
    hours by the difference, never twice."""

    __tablename__ = "cloud_resource_hours"

    resource_uuid: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    metric: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    hour: Mapped[dt.datetime] = mapped_column(primary_key=True)
    subscription_id: Mapped[uuid.UUID] = mapped_column(index=True)
    quantity: Mapped[Decimal] = mapped_column(QUANTITY)


class CloudEventRules(db.Model):  # type: ignore[name-defined,misc]
    """Which cloud events start and stop billing for a marketplace's resources, and the
    metrics their time is recorded as (defaults in :mod:`cmw.usage.cloud`)."""

    __tablename__ = "cloud_event_rules"

    marketplace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("marketplaces.id", ondelete="CASCADE"), primary_key=True
    )
    vm_start: Mapped[list[str]] = mapped_column(sa.JSON)
    vm_stop: Mapped[list[str]] = mapped_column(sa.JSON)
    volume_start: Mapped[list[str]] = mapped_column(sa.JSON)
    volume_stop: Mapped[list[str]] = mapped_column(sa.JSON)
    vm_metric: Mapped[str] = mapped_column(sa.String(100))
    volume_metric: Mapped[str] = mapped_column(sa.String(100))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
