"""``Invoice`` and its ``InvoiceLine``\\ s, ``BilledItem`` (a subscription-period billed
once, by a unique constraint), ``NumberSeries`` (gapless invoice numbers), ``BillingRun``,
and ``UsageHourly`` (the per-subscription, per-metric, per-hour usage billing rates)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cmw.db import Timestamps, UUIDPrimaryKey, str_enum, utcnow
from cmw.extensions import db

#: amounts on invoices: rounded to the currency's minor unit (at most 4 decimals, e.g. BHD 3)
MONEY = sa.Numeric(18, 4)
#: quantities and unit prices: as precise as the catalog's prices
QUANTITY = sa.Numeric(24, 8)


class InvoiceStatus(enum.StrEnum):
    #: being put together; no number yet
    DRAFT = "draft"
    #: numbered and sent; never changed again
    ISSUED = "issued"
    #: paid in full
    PAID = "paid"
    #: cancelled after issue (a credit note corrects it)
    VOID = "void"


class LineKind(enum.StrEnum):
    #: a flat recurring fee, in advance
    FEE = "fee"
    #: the one-time setup fee
    SETUP = "setup"
    #: a per-unit recurring fee times the quantity, in advance
    PER_UNIT = "per_unit"
    #: metered usage of an ended period, in arrears
    USAGE = "usage"
    #: credit for the unused part of a period's fees, or the charge for the rest of it
    PRORATION = "proration"
    #: a coupon's discount on a period's fees
    DISCOUNT = "discount"


class BilledKind(enum.StrEnum):
    #: the fees paid in advance for a period (flat and per-unit)
    ADVANCE = "advance"
    #: the setup fee (once per subscription)
    SETUP = "setup"
    #: the usage of an ended period
    USAGE = "usage"
    #: a change within a period (plan, quantity, cancellation at once), keyed by its time
    PRORATION = "proration"


class BillingRun(UUIDPrimaryKey, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "billing_runs"

    #: what the run billed up to
    at: Mapped[dt.datetime]
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    #: running, finished or failed
    status: Mapped[str] = mapped_column(sa.String(10), default="running")
    invoices: Mapped[int] = mapped_column(default=0)
    lines: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(sa.Text)


class Invoice(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "invoices"
    __table_args__ = (
        sa.UniqueConstraint("series", "year", "sequence", name="uq_invoices_series_year_sequence"),
        sa.Index("ix_invoices_customer", "marketplace_id", "customer_id", "created_at"),
        sa.CheckConstraint("length(currency) = 3", name="currency_alpha3"),
    )

    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="RESTRICT"))
    customer_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("organisations.id", ondelete="RESTRICT"))
    billing_run_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("billing_runs.id", ondelete="SET NULL")
    )
    currency: Mapped[str] = mapped_column(sa.String(3))
    status: Mapped[InvoiceStatus] = mapped_column(str_enum(InvoiceStatus, "invoice_status"), index=True)
    #: the numbering series (per marketplace) and year; sequence is gapless within them
    series: Mapped[str | None] = mapped_column(sa.String(40))
    year: Mapped[int | None]
    sequence: Mapped[int | None]
    #: dunning: how many reminders were sent, and whether the subscriptions went past due
    reminders_sent: Mapped[int] = mapped_column(default=0)
    #: the printed number, e.g. MKT-2026-000042
    number: Mapped[str | None] = mapped_column(sa.String(60), unique=True)
    issued_at: Mapped[dt.datetime | None]
    due_at: Mapped[dt.datetime | None]
    subtotal: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    tax_total: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    total: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    #: the buyer as billed, frozen at issue (legal name, address, country, VAT number)
    buyer: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: the seller (the marketplace's legal entity), frozen at issue
    seller: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: the tax rate applied, in percent, and the rule as printed on the invoice
    tax_rate: Mapped[Decimal] = mapped_column(sa.Numeric(7, 4), default=Decimal(0))
    tax_rule: Mapped[str] = mapped_column(sa.Text, default="")

    lines: Mapped[list[InvoiceLine]] = relationship(
        back_populates="invoice",
        cascade="all, delete-orphan",
        order_by="InvoiceLine.position",
        primaryjoin="Invoice.id == foreign(InvoiceLine.invoice_id)",
    )


class InvoiceLine(UUIDPrimaryKey, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "invoice_lines"

    #: the invoice, written in the same transaction: lines and billed items carry no foreign
    #: key to it, whose check costs a lookup per row and turned a first run on a fresh
    #: database quadratic (the planner scans an invoices table it believes empty)
    invoice_id: Mapped[uuid.UUID] = mapped_column(index=True)
    position: Mapped[int] = mapped_column(default=0)
    kind: Mapped[LineKind] = mapped_column(str_enum(LineKind, "invoice_line_kind"))
    description: Mapped[str] = mapped_column(sa.String(300))
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("subscriptions.id", ondelete="RESTRICT"), index=True
    )
    #: whose product, and which plan: revenue per vendor reads these. Recorded as they were
    #: when billed, like the description: an issued line is a document, so these carry no
    #: foreign key (which would also cost a lookup per line on runs of hundreds of thousands)
    product_id: Mapped[uuid.UUID | None]
    vendor_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    plan_id: Mapped[uuid.UUID | None]
    period_start: Mapped[dt.datetime | None]
    period_end: Mapped[dt.datetime | None]
    quantity: Mapped[Decimal] = mapped_column(QUANTITY, default=Decimal(1))
    unit: Mapped[str | None] = mapped_column(sa.String(30))
    #: unit price where one applies (tiered usage has none: see amount)
    unit_price: Mapped[Decimal | None] = mapped_column(QUANTITY)
    #: the line's amount, rounded to the currency's minor unit
    amount: Mapped[Decimal] = mapped_column(MONEY)
    #: what the issuing marketplace owes up the tree for this line, each party's due from
    #: the one below it: ``[{"marketplace_id": parent, "amount": "8.00"}, ...,
    #: {"vendor_id": vendor, "amount": "6.40"}]``; each party earns what it received less
    #: what it owes (``cmw.marketplaces.pricing``). NULL on lines written before the split.
    revenue_split: Mapped[list[dict[str, str]] | None] = mapped_column(sa.JSON)

    invoice: Mapped[Invoice] = relationship(
        back_populates="lines", primaryjoin="Invoice.id == foreign(InvoiceLine.invoice_id)"
    )


class BilledItem(db.Model):  # type: ignore[name-defined,misc]
    """A subscription's period billed for one kind of charge: at most once, ever."""

    __tablename__ = "billed_items"

    subscription_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("subscriptions.id", ondelete="RESTRICT"), primary_key=True
    )
    kind: Mapped[BilledKind] = mapped_column(str_enum(BilledKind, "billed_kind"), primary_key=True)
    period_start: Mapped[dt.datetime] = mapped_column(primary_key=True)
    #: written with its invoice, in one transaction (no foreign key: see InvoiceLine)
    invoice_id: Mapped[uuid.UUID] = mapped_column(index=True)
    billed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class NumberSeries(db.Model):  # type: ignore[name-defined,misc]
    """The last number given in a series and year. Incremented under its row lock inside
    the issuing transaction, so numbers have no gaps and no duplicates."""

    __tablename__ = "number_series"

    series: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    year: Mapped[int] = mapped_column(primary_key=True)
    last: Mapped[int] = mapped_column(default=0)


class UsageHourly(db.Model):  # type: ignore[name-defined,misc]
    """Usage of a subscription, per metric and hour: what billing rates. Filled by the
    metering (and, until it lands, by tests and the demo)."""

    __tablename__ = "usage_hourly"

    subscription_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("subscriptions.id", ondelete="CASCADE"), primary_key=True
    )
    metric: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    #: the hour's start (UTC)
    hour: Mapped[dt.datetime] = mapped_column(primary_key=True)
    quantity: Mapped[Decimal] = mapped_column(QUANTITY)


class BillingSettings(db.Model):  # type: ignore[name-defined,misc]
    """A marketplace's seller details and payment terms, printed on its invoices."""

    __tablename__ = "billing_settings"

    marketplace_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("marketplaces.id", ondelete="CASCADE"), primary_key=True
    )
    seller_legal_name: Mapped[str] = mapped_column(sa.String(200), default="")
    #: ISO 3166-1 alpha-2
    seller_country: Mapped[str | None] = mapped_column(sa.String(2))
    seller_vat_number: Mapped[str | None] = mapped_column(sa.String(32))
    #: address lines as printed
    seller_address: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    payment_terms_days: Mapped[int] = mapped_column(default=14)
    #: how to pay (bank account, IBAN), printed with the payment terms
    payment_instructions: Mapped[str] = mapped_column(sa.Text, default="")
    #: dunning: reminders this many days after the due date
    reminder_days: Mapped[list[int]] = mapped_column(sa.JSON, default=lambda: [1, 7, 14])
    #: the invoice's subscriptions become past_due this many days after the due date
    past_due_after_days: Mapped[int] = mapped_column(default=3)
    #: their instances are suspended (stopped, kept) this many days after it
    suspend_after_days: Mapped[int] = mapped_column(default=14)
    #: and are cancelled (their instances removed) this many days after it
    cancel_after_days: Mapped[int] = mapped_column(default=30)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class TaxRate(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    """A tax rate for sales from ``seller_country`` to ``buyer_country`` (``*``: any buyer)."""

    __tablename__ = "tax_rates"
    __table_args__ = (
        sa.UniqueConstraint(
            "marketplace_id", "seller_country", "buyer_country", name="uq_tax_rates_countries"
        ),
        sa.CheckConstraint("rate >= 0 AND rate <= 100", name="rate_percent"),
    )

    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="CASCADE"))
    seller_country: Mapped[str] = mapped_column(sa.String(2))
    buyer_country: Mapped[str] = mapped_column(sa.String(2))
    #: percent, e.g. 22 for 22 %
    rate: Mapped[Decimal] = mapped_column(sa.Numeric(7, 4))
    #: printed before the rate, e.g. "VAT"
    name: Mapped[str] = mapped_column(sa.String(60), default="VAT")


class PaymentMethod(enum.StrEnum):
    MANUAL = "manual"
    BANK_TRANSFER = "bank_transfer"
    #: reserved for a payment provider's notifications
    PROVIDER = "provider"


class Payment(UUIDPrimaryKey, db.Model):  # type: ignore[name-defined,misc]
    """Money received against an invoice."""

    __tablename__ = "payments"
    __table_args__ = (
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.UniqueConstraint("method", "reference", name="uq_payments_method_reference"),
    )

    invoice_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("invoices.id", ondelete="RESTRICT"), index=True
    )
    amount: Mapped[Decimal] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(sa.String(3))
    method: Mapped[PaymentMethod] = mapped_column(str_enum(PaymentMethod, "payment_method"))
    #: the bank's or provider's reference; unique per method, so a payment is recorded once
    reference: Mapped[str | None] = mapped_column(sa.String(120))
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    recorded_by_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))


class CreditNote(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    """A correction of an issued invoice, with its own gapless number series."""

    __tablename__ = "credit_notes"
    __table_args__ = (
        sa.UniqueConstraint("series", "year", "sequence", name="uq_credit_notes_series_year_sequence"),
        sa.CheckConstraint("total > 0", name="total_positive"),
    )

    invoice_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("invoices.id", ondelete="RESTRICT"), index=True
    )
    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="RESTRICT"))
    customer_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organisations.id", ondelete="RESTRICT"), index=True
    )
    currency: Mapped[str] = mapped_column(sa.String(3))
    series: Mapped[str] = mapped_column(sa.String(40))
    year: Mapped[int]
    sequence: Mapped[int]
    number: Mapped[str] = mapped_column(sa.String(60), unique=True)
    issued_at: Mapped[dt.datetime]
    reason: Mapped[str] = mapped_column(sa.Text)
    #: amounts credited (positive), net, tax at the invoice's rate, and gross
    subtotal: Mapped[Decimal] = mapped_column(MONEY)
    tax_total: Mapped[Decimal] = mapped_column(MONEY)
    total: Mapped[Decimal] = mapped_column(MONEY)
    #: the subscription a credit is for, when it corrects one (a failed deployment)
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("subscriptions.id", ondelete="RESTRICT")
    )


class CouponKind(enum.StrEnum):
    PERCENT = "percent"
    FIXED = "fixed"


class CouponDuration(enum.StrEnum):
    #: the first period billed after it is redeemed
    ONCE = "once"
    #: ``periods`` periods
    REPEATING = "repeating"
    FOREVER = "forever"


class Coupon(UUIDPrimaryKey, Timestamps, db.Model):  # type: ignore[name-defined,misc]
    """A discount on a subscription's recurring fees, applied as an invoice line."""

    __tablename__ = "coupons"
    __table_args__ = (
        sa.UniqueConstraint("marketplace_id", "code", name="uq_coupons_marketplace_code"),
        sa.CheckConstraint("(kind = 'percent') = (percent IS NOT NULL)", name="percent_for_percent"),
        sa.CheckConstraint(
            "(kind = 'fixed') = (amount IS NOT NULL AND currency IS NOT NULL)", name="amount_for_fixed"
        ),
    )

    marketplace_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("marketplaces.id", ondelete="CASCADE"))
    #: what customers type, upper case
    code: Mapped[str] = mapped_column(sa.String(40))
    kind: Mapped[CouponKind] = mapped_column(str_enum(CouponKind, "coupon_kind"))
    #: 0 < percent <= 100
    percent: Mapped[Decimal | None] = mapped_column(sa.Numeric(5, 2))
    amount: Mapped[Decimal | None] = mapped_column(MONEY)
    currency: Mapped[str | None] = mapped_column(sa.String(3))
    duration: Mapped[CouponDuration] = mapped_column(str_enum(CouponDuration, "coupon_duration"))
    #: periods, for a repeating coupon
    periods: Mapped[int | None]
    #: limited to these products (ids) and plan codes; empty: any
    product_ids: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    plan_codes: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    max_redemptions: Mapped[int | None]
    expires_at: Mapped[dt.datetime | None]


class CouponRedemption(UUIDPrimaryKey, db.Model):  # type: ignore[name-defined,misc]
    """A coupon applied to a subscription (one coupon per subscription)."""

    __tablename__ = "coupon_redemptions"

    coupon_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("coupons.id", ondelete="RESTRICT"), index=True)
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("subscriptions.id", ondelete="CASCADE"), unique=True
    )
    redeemed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    redeemed_by_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    #: periods it has discounted so far
    periods_applied: Mapped[int] = mapped_column(default=0)
