"""``Order`` (a request to buy or trial a plan), ``Subscription`` (the contract it creates),
``SubscriptionChange`` (its append-only history) and ``TrialGrant`` (one trial per
customer organisation and product, for ever)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cmw.db import Timestamps, UUIDPrimaryKey, str_enum, utcnow
from cmw.extensions import db


class OrderKind(enum.StrEnum):
    #: a paid subscription from the start
    PURCHASE = "purchase"
    #: a free trial of the product's trial length
    TRIAL = "trial"
    #: a change of plan or quantity of an existing subscription, for a product whose
    #: changes need approval
    CHANGE = "change"


class OrderStatus(enum.StrEnum):
    #: received, not yet accepted
    PENDING = "pending"
    #: the product needs approval: waits for its auditor (the vendor, or the reseller)
    AWAITING_APPROVAL = "awaiting_approval"
    #: refused by the auditor, with a reason
    REJECTED = "rejected"
    #: accepted: the subscription exists and provisioning was requested
    CONFIRMED = "confirmed"
    #: what was bought runs (the deployment is ready)
    FULFILLED = "fulfilled"
    #: withdrawn before fulfilment
    CANCELLED = "cancelled"
    #: could not be fulfilled; see failure_reason
    FAILED = "failed"


class SubscriptionStatus(enum.StrEnum):
    #: in its free trial
    TRIALING = "trialing"
    #: paid and running
    ACTIVE = "active"
    #: an invoice is overdue
    PAST_DUE = "past_due"
    #: ended by the customer or an admin
    CANCELLED = "cancelled"
    #: a trial that ended without converting
    EXPIRED = "expired"


class Order(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "orders"
    __table_args__ = (
        # An Idempotency-Key is unique per user who sends it.
        sa.UniqueConstraint("placed_by_id", "idempotency_key", name="uq_orders_idempotency"),
        sa.CheckConstraint("quantity >= 1", name="quantity_positive"),
        sa.Index("ix_orders_marketplace_created", "marketplace_id", "created_at"),
        # the approval queues read only the waiting orders
        sa.Index(
            "ix_orders_awaiting_approval",
            "marketplace_id",
            "product_id",
            postgresql_where=sa.text("status = 'awaiting_approval'"),
            sqlite_where=sa.text("status = 'awaiting_approval'"),
        ),
    )

    #: tenant
    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="RESTRICT"))
    #: the customer organisation that buys
    customer_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organisations.id", ondelete="RESTRICT"), index=True
    )
    #: the user who clicked
    placed_by_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="RESTRICT"))
    product_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("products.id", ondelete="RESTRICT"), index=True
    )
    #: the product version the customer saw (prices and deployment spec at order time)
    version_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("product_versions.id", ondelete="RESTRICT"))
    plan_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("plans.id", ondelete="RESTRICT"))
    #: purchase, trial or change
    kind: Mapped[OrderKind] = mapped_column(str_enum(OrderKind, "kind"))
    #: pending, confirmed, fulfilled, cancelled or failed
    status: Mapped[OrderStatus] = mapped_column(str_enum(OrderStatus, "status"))
    #: quantity of the plan's per-unit components (seats)
    quantity: Mapped[int] = mapped_column(default=1)
    #: deployment target chosen (cloud account slug and region)
    cloud_account: Mapped[str] = mapped_column(sa.String(63))
    region: Mapped[str | None] = mapped_column(sa.String(64))
    #: the customer's own cloud account it runs in: only the licence is charged, not the
    #: plan's infrastructure components
    own_cloud_account_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("cloud_accounts.id", ondelete="RESTRICT")
    )
    #: the customer's SSH public key for the machine (OpenSSH one-line format)
    ssh_public_key: Mapped[str | None] = mapped_column(sa.Text)
    #: the customer's values of the product's customer-editable setup variables
    variables: Mapped[dict[str, str] | None] = mapped_column(sa.JSON)
    #: ISO 4217 currency of the breakdown
    currency: Mapped[str] = mapped_column(sa.String(3))
    #: price breakdown at order time: lines with decimal strings (see orders.pricing)
    breakdown: Mapped[dict[str, Any]]
    #: the client's Idempotency-Key, and the SHA-256 of the request it came with
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    request_hash: Mapped[str | None] = mapped_column(sa.String(64))
    #: the subscription the order created
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("subscriptions.id", ondelete="SET NULL"), index=True
    )
    #: set on a new order with its new subscription, so that one flush inserts the
    #: subscription first (the unit of work orders inserts by relationships only); never loaded
    subscription: Mapped[Subscription | None] = relationship(lazy="raise_on_sql")
    confirmed_at: Mapped[dt.datetime | None]
    failure_reason: Mapped[str | None] = mapped_column(sa.Text)
    #: for a change order: the plan and quantity before (the order's plan and quantity are after)
    change_from: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    #: who approved or rejected it, when, and why not
    decided_by_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    decided_at: Mapped[dt.datetime | None]
    rejection_reason: Mapped[str | None] = mapped_column(sa.Text)


class Subscription(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "subscriptions"
    __table_args__ = (sa.Index("ix_subscriptions_customer_product", "customer_id", "product_id"),)

    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="RESTRICT"))
    customer_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("organisations.id", ondelete="RESTRICT"))
    product_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("products.id", ondelete="RESTRICT"), index=True
    )
    plan_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("plans.id", ondelete="RESTRICT"))
    #: seats or other per-unit quantity
    quantity: Mapped[int] = mapped_column(default=1)
    #: trialing, active, past_due, cancelled or expired
    status: Mapped[SubscriptionStatus] = mapped_column(str_enum(SubscriptionStatus, "status"), index=True)
    #: the day periods renew on (UTC); periods run from anchor to anchor
    billing_anchor: Mapped[dt.datetime]
    current_period_start: Mapped[dt.datetime]
    current_period_end: Mapped[dt.datetime] = mapped_column(index=True)
    #: when the free trial ends (UTC); NULL for purchases
    trial_end: Mapped[dt.datetime | None]
    #: the customer chose to stop at the end of the current period
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False)
    cancelled_at: Mapped[dt.datetime | None]
    cloud_account: Mapped[str] = mapped_column(sa.String(63))
    region: Mapped[str | None] = mapped_column(sa.String(64))
    #: the customer's own cloud account it runs in: only the licence is charged, not the
    #: plan's infrastructure components
    own_cloud_account_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("cloud_accounts.id", ondelete="RESTRICT")
    )
    #: a downgrade waiting for the end of the current period
    pending_plan_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("plans.id", ondelete="SET NULL"))
    #: when the customer was told the trial ends in 3 days (UTC)
    trial_reminder_sent_at: Mapped[dt.datetime | None]
    #: since when its instance is suspended for an unpaid invoice (NULL: not suspended)
    suspended_at: Mapped[dt.datetime | None]

    @property
    def licence_only(self) -> bool:
        """Runs in the customer's own cloud: the plan's infrastructure components are not charged."""
        return self.own_cloud_account_id is not None


class SubscriptionChange(db.Model):  # type: ignore[name-defined,misc]
    """What happened to a subscription: who, when, from what, to what. Never updated."""

    __tablename__ = "subscription_changes"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True
    )
    #: for the unit of work's insert order, as on Order; never loaded
    subscription: Mapped[Subscription] = relationship(lazy="raise_on_sql")
    #: created, trial_started, activated, plan_changed, quantity_changed, cancelled, ...
    kind: Mapped[str] = mapped_column(sa.String(40))
    #: the user who made the change; NULL for the platform's own jobs
    actor_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: the changed fields before and after (JSON values)
    before: Mapped[dict[str, Any]] = mapped_column(default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(default=dict)


class TrialGrant(db.Model):  # type: ignore[name-defined,misc]
    """A customer organisation has had its one trial of a product."""

    __tablename__ = "trial_grants"

    customer_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True
    )
    product_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("products.id", ondelete="CASCADE"), primary_key=True
    )
    granted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
