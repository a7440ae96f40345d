"""The billing run: what each subscription owes up to a moment, on one invoice per customer
organisation, marketplace and currency, issued with a gapless number.

A subscription's paid periods start at its billing anchor (the purchase, or the trial's
conversion) and follow each other by the plan's period. Up to ``at`` the run bills:

* the fees of each period that has started, in advance: flat fees, and per-unit fees
  times the quantity in effect when the period starts;
* the setup fee, once, with the first period;
* the metered usage of each period that has ended (or ended early by a cancellation),
  rated from ``usage_hourly`` with the catalog's one rating function.

Each (subscription, kind, period start) is recorded in ``billed_items`` under its primary
key, so nothing is ever billed twice: not by a second run, not by two runs racing (each
customer is billed in one transaction that locks its subscriptions, ``SKIP LOCKED``, and
the key refuses what a racing transaction got first). Lines are rounded to the currency's
minor unit; totals are sums of rounded lines.

Changes inside a period are prorated by the second: an upgrade or a quantity change
credits the rest of the period at the old plan and quantity and charges it at the new
ones; a cancellation at once credits the rest. A downgrade waits for the period's end, so
the next period is simply billed at the new plan. Usage is rated with the plan in effect
at the period's start.

Tax is decided per invoice by :mod:`cmw.billing.taxes` (rates by seller and buyer
country, EU reverse charge) and computed on the subtotal, rounded once.

Not yet: coupons, credit notes, payments (next slices).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from cmw.accounts.models import Organisation
from cmw.billing import coupons, taxes
from cmw.billing.errors import BillingError as BillingError
from cmw.billing.models import (
    BilledItem,
    BilledKind,
    BillingRun,
    BillingSettings,
    Coupon,
    CouponRedemption,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    NumberSeries,
    UsageHourly,
)
from cmw.catalog import service as catalog
from cmw.catalog.models import BillingPeriod, ComponentKind, Plan, Product
from cmw.catalog.pricing import rate_component
from cmw.db import utcnow
from cmw.events.service import emit
from cmw.marketplaces import pricing as marketplace_pricing
from cmw.marketplaces.models import Marketplace
from cmw.marketplaces.pricing import PriceList
from cmw.money import format_amount, round_to_minor
from cmw.monitoring import metrics
from cmw.orders.models import Subscription, SubscriptionChange, SubscriptionStatus
from cmw.orders.pricing import charged
from cmw.orders.service import next_period_end
from deployer import service as deployments

log = logging.getLogger(__name__)

ZERO = Decimal(0)
#: payment terms where the marketplace set none: an invoice is due this long after issue
PAYMENT_TERMS = dt.timedelta(days=14)
#: statuses whose subscriptions may still owe something
BILLABLE = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE, SubscriptionStatus.CANCELLED)
#: change kinds after which a subscription is paid (not a trial)
PAID_FROM = ("activated", "converted")


@dataclasses.dataclass(frozen=True)
class Charge:
    """One line to bill, and the billed item that makes it happen once."""

    billed: BilledKind
    kind: LineKind
    subscription: Subscription
    plan: Plan
    period_start: dt.datetime
    period_end: dt.datetime
    description: str
    quantity: Decimal
    unit: str | None
    unit_price: Decimal | None
    amount: Decimal
    #: what the issuing marketplace owes up the tree for it, each party's due (see
    #: ``PriceList.owed``): its parent marketplaces', then the vendor's
    owed: tuple[Decimal, ...] = ()


@dataclasses.dataclass
class RunReport:
    run_id: uuid.UUID | None = None
    invoices: list[str] = dataclasses.field(default_factory=list)
    lines: int = 0
    skipped_customers: int = 0


# ------------------------------------------------------------------ history
def _effective(change: SubscriptionChange) -> dt.datetime:
    """When a recorded change took effect: a scheduled plan change at its ISO time, else when recorded."""
    when = change.after.get("effective") if isinstance(change.after, dict) else None
    if isinstance(when, str) and when not in ("now", "period_end"):
        try:
            parsed = dt.datetime.fromisoformat(when)
        except ValueError:
            return change.at
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return change.at


def state_at(
    changes: Sequence[SubscriptionChange], instant: dt.datetime
) -> tuple[uuid.UUID | None, int | None]:
    """The plan id and quantity in effect at ``instant``, from the subscription's history."""
    plan_id: uuid.UUID | None = None
    quantity: int | None = None
    for change in sorted(changes, key=lambda c: (_effective(c), c.id)):
        if _effective(change) > instant:
            break
        after = change.after or {}
        if after.get("plan_id"):
            plan_id = uuid.UUID(str(after["plan_id"]))
        if after.get("quantity") is not None:
            quantity = int(after["quantity"])
    return plan_id, quantity


def paid_periods(
    subscription: Subscription, period: BillingPeriod, at: dt.datetime, ends_at: dt.datetime | None = None
) -> Iterable[tuple[dt.datetime, dt.datetime]]:
    """The subscription's paid periods (start, end) that have started by ``at`` (a period
    starting at ``at`` has started) and before the subscription ended at ``ends_at``."""
    start = subscription.billing_anchor
    while start <= at and (ends_at is None or start < ends_at):
        end = next_period_end(subscription.billing_anchor, start, period)
        yield start, end
        start = end


def _immediate(change: SubscriptionChange) -> bool:
    """A change that takes effect when recorded, inside a period: an upgrade, a quantity
    change, a cancellation at once (not a downgrade scheduled for the period's end)."""
    if change.kind == "quantity_changed":
        return True
    if change.kind == "plan_changed":
        return (change.after or {}).get("effective") == "now"
    return change.kind == "cancelled" and (change.after or {}).get("at") is None


def advance_amount(
    plan: Plan, quantity: int, prices: PriceList, level: int = 0, licence_only: bool = False
) -> Decimal:
    """A period's fees paid in advance (flat and per unit), unrounded, at the prices of the
    ``level``-th marketplace up from the selling one."""
    return sum(
        (
            rate_component(prices.at_levels(plan, i)[level], Decimal(quantity))
            for i, c in charged(plan, licence_only)
            if c.kind in (ComponentKind.FLAT, ComponentKind.PER_UNIT)
        ),
        ZERO,
    )


def _rated(
    prices: PriceList, plan: Plan, index: int, quantity: Decimal
) -> tuple[Decimal, tuple[Decimal, ...], Decimal | None]:
    """Component ``index`` of ``plan`` rated for ``quantity`` where it is sold: the amount,
    what is owed up the tree for it, and the unit price (rounded amounts)."""
    levels = prices.at_levels(plan, index)
    amounts = [round_to_minor(rate_component(spec, quantity), plan.currency) for spec in levels]
    return amounts[0], prices.owed(amounts, plan.currency), levels[0].unit_price


def prorate(amount: Decimal, start: dt.datetime, end: dt.datetime, at: dt.datetime) -> Decimal:
    """The part of a period's ``amount`` from ``at`` to the period's ``end``, by the second
    (unrounded): the whole amount at the period's start, nothing at its end."""
    whole = Decimal(int((end - start).total_seconds()))
    rest = Decimal(int((end - max(at, start)).total_seconds()))
    return amount * max(rest, ZERO) / whole if whole else ZERO


# ------------------------------------------------------------------ charges
class RunContext:
    """What a billing run reads again and again, read once: plans with their price
    components, products' names and vendors, each marketplace's billing settings, seller
    details and tax rules. Read through a session of its own, kept for the run."""

    def __init__(
        self, session_factory: Callable[[], Session], run_id: uuid.UUID, at: dt.datetime, now: dt.datetime
    ):
        self.run_id, self.at, self.now = run_id, at, now
        self.reader = session_factory()
        self._plans: dict[uuid.UUID, Plan] = {}
        self._products: dict[uuid.UUID, tuple[str, uuid.UUID]] = {}
        self._settings: dict[uuid.UUID, BillingSettings | None] = {}
        self._sellers: dict[uuid.UUID, dict[str, Any]] = {}
        self._rules: dict[tuple[uuid.UUID, str, bool], taxes.TaxRule] = {}
        self._prices: dict[tuple[uuid.UUID, uuid.UUID], PriceList] = {}

    def close(self) -> None:
        self.reader.close()

    def plan(self, plan_id: uuid.UUID) -> Plan:
        found = self._plans.get(plan_id)
        if found is None:
            found = self.reader.scalars(
                sa.select(Plan).options(selectinload(Plan.components)).where(Plan.id == plan_id)
            ).one()
            self._plans[plan_id] = found
        return found

    def product(self, product_id: uuid.UUID) -> tuple[str, uuid.UUID]:
        """The product's name and its vendor."""
        found = self._products.get(product_id)
        if found is None:
            vendor_id = self.reader.scalar(sa.select(Product.vendor_id).where(Product.id == product_id))
            assert vendor_id is not None
            found = self._products[product_id] = (catalog.product_name(self.reader, product_id), vendor_id)
        return found

    def prices(self, subscription: Subscription) -> PriceList:
        """The prices of the subscription's product where it was bought, and who is owed what."""
        key = (subscription.marketplace_id, subscription.product_id)
        found = self._prices.get(key)
        if found is None:
            found = self._prices[key] = marketplace_pricing.price_list_of(self.reader, *key)
        return found

    def split(self, charge: Charge) -> list[dict[str, str]] | None:
        """The charge's revenue split as its invoice line records it."""
        return self.prices(charge.subscription).split(charge.owed) if charge.owed else None

    def settings(self, marketplace_id: uuid.UUID) -> BillingSettings | None:
        if marketplace_id not in self._settings:
            self._settings[marketplace_id] = self.reader.get(BillingSettings, marketplace_id)
        return self._settings[marketplace_id]

    def seller(self, marketplace_id: uuid.UUID) -> dict[str, Any]:
        if marketplace_id not in self._sellers:
            self._sellers[marketplace_id] = _seller(
                self.reader, marketplace_id, self.settings(marketplace_id)
            )
        return self._sellers[marketplace_id]

    def rule(self, marketplace_id: uuid.UUID, country: str, vat_number: str | None) -> taxes.TaxRule:
        key = (marketplace_id, country.upper(), bool(vat_number))
        if key not in self._rules:
            self._rules[key] = taxes.rule_for(
                self.reader, marketplace_id, self.settings(marketplace_id), country, vat_number
            )
        return self._rules[key]


#: one hour's usage: metric, hour, quantity
UsageRow = tuple[str, dt.datetime, Decimal]


#: the advisory lock between usage ingestion (shared) and billing (exclusive)
USAGE_LOCK = 0x6D65_7263_7573_6167  # "mercusag"


def usage_lock(session: Session, *, exclusive: bool) -> None:
    """Hold, until the transaction ends, the lock usage ingestion takes shared and billing
    exclusive (PostgreSQL; SQLite has one writer at a time anyway)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    take = sa.func.pg_advisory_xact_lock if exclusive else sa.func.pg_advisory_xact_lock_shared
    session.execute(sa.select(take(USAGE_LOCK)))


def hour_floor(at: dt.datetime) -> dt.datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def hour_ceil(at: dt.datetime) -> dt.datetime:
    floor = hour_floor(at)
    return floor if floor == at else floor + dt.timedelta(hours=1)


def _used(
    rows: Sequence[UsageRow], start: dt.datetime, end: dt.datetime, *, last: bool
) -> dict[str, Decimal]:
    """Each metric's usage in the hours of a period. Usage is kept per hour, and periods
    rarely begin on the hour: an hour belongs to the period its start falls in once the
    boundaries are rounded down to the hour (so every hour is in exactly one period, the
    one its first minute is billed in), and the subscription's ``last`` period keeps the
    hour it ended in."""
    low, high = hour_floor(start), hour_ceil(end) if last else hour_floor(end)
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for metric, hour, quantity in rows:
        if low <= hour < high:
            totals[metric] += quantity
    return totals


def charges_for(
    ctx: RunContext,
    subscription: Subscription,
    changes: Sequence[SubscriptionChange],
    billed: set[tuple[BilledKind, dt.datetime]],
    usage: Sequence[UsageRow],
    coupon: tuple[CouponRedemption, Coupon] | None = None,
) -> list[Charge]:
    """What ``subscription`` owes up to the run's ``at`` and has not been billed."""
    if not any(c.kind in PAID_FROM for c in changes):
        return []  # a trial that never converted owes nothing
    at = ctx.at
    product_name = ctx.product(subscription.product_id)[0]
    ends_at = subscription.cancelled_at if subscription.status is SubscriptionStatus.CANCELLED else None
    current = ctx.plan(subscription.plan_id)
    prices = ctx.prices(subscription)
    found: list[Charge] = []
    first = True
    for start, end in paid_periods(subscription, current.billing_period, at, ends_at):
        plan_id, quantity = state_at(changes, start)
        plan = ctx.plan(plan_id) if plan_id else current
        quantity = quantity or subscription.quantity
        period_label = f"{start:%d %b %Y} to {end:%d %b %Y}"
        if first and (BilledKind.SETUP, start) not in billed:
            for i, c in charged(plan, subscription.licence_only):
                if c.kind is ComponentKind.SETUP:
                    amount, owed, _price = _rated(prices, plan, i, Decimal(1))
                    found.append(
                        Charge(BilledKind.SETUP, LineKind.SETUP, subscription, plan, start, end,
                               f"{product_name} · {plan.name} · {c.label}", Decimal(1), None, amount, amount,
                               owed)
                    )  # fmt: skip
        first = False
        if (BilledKind.ADVANCE, start) not in billed:
            for i, c in charged(plan, subscription.licence_only):
                if c.kind is ComponentKind.FLAT:
                    amount, owed, price = _rated(prices, plan, i, Decimal(1))
                    found.append(
                        Charge(BilledKind.ADVANCE, LineKind.FEE, subscription, plan, start, end,
                               f"{product_name} · {plan.name} · {c.label}, {period_label}",
                               Decimal(1), None, price, amount, owed)
                    )  # fmt: skip
                elif c.kind is ComponentKind.PER_UNIT:
                    amount, owed, price = _rated(prices, plan, i, Decimal(quantity))
                    found.append(
                        Charge(BilledKind.ADVANCE, LineKind.PER_UNIT, subscription, plan, start, end,
                               f"{product_name} · {plan.name} · {c.label}, {period_label}",
                               Decimal(quantity), c.unit, price, amount, owed)
                    )  # fmt: skip
            fees = sum(
                (f.amount for f in found if f.billed is BilledKind.ADVANCE and f.period_start == start), ZERO
            )
            if coupon is not None and fees > 0 and coupons.applies(coupon[1], coupon[0], plan):
                redemption, offer = coupon
                off = coupons.discount(offer, fees, plan.currency)
                redemption.periods_applied += 1
                # the selling marketplace's coupon: it gives the discount, what it owes is unchanged
                found.append(
                    Charge(BilledKind.ADVANCE, LineKind.DISCOUNT, subscription, plan, start, end,
                           f"{product_name} · coupon {offer.code}, {period_label}",
                           Decimal(1), None, None, -off, prices.owed_nothing())
                )  # fmt: skip
        found += _prorations(ctx, prices, subscription, changes, start, end, billed, product_name)
        usage_end = min(end, ends_at) if ends_at is not None else end
        metered = [c for _i, c in charged(plan, subscription.licence_only) if c.kind is ComponentKind.METERED]
        if metered and usage_end <= at and (BilledKind.USAGE, start) not in billed:
            used = _used(usage, start, usage_end, last=ends_at is not None and usage_end == ends_at)
            usage_label = f"{start:%d %b %Y} to {usage_end:%d %b %Y}"
            for i, c in charged(plan, subscription.licence_only):
                if c.kind is not ComponentKind.METERED:
                    continue
                assert c.metric is not None
                quantity_used = used.get(c.metric, ZERO)
                amount, owed, price = _rated(prices, plan, i, quantity_used)
                found.append(
                    Charge(BilledKind.USAGE, LineKind.USAGE, subscription, plan, start, usage_end,
                           f"{product_name} · {plan.name} · {c.label}, {usage_label}",
                           quantity_used, c.unit, price, amount, owed)
                )  # fmt: skip
    return found


def _prorated(
    prices: PriceList,
    plan: Plan,
    quantity: int,
    start: dt.datetime,
    end: dt.datetime,
    when: dt.datetime,
    licence_only: bool = False,
) -> tuple[Decimal, tuple[Decimal, ...]]:
    """The fees from ``when`` to the period's end where sold, and what is owed up for them."""
    amounts = [
        round_to_minor(
            prorate(advance_amount(plan, quantity, prices, level, licence_only), start, end, when),
            plan.currency,
        )
        for level in range(len(prices.levels))
    ]
    return amounts[0], prices.owed(amounts, plan.currency)


def _prorations(
    ctx: RunContext,
    prices: PriceList,
    subscription: Subscription,
    changes: Sequence[SubscriptionChange],
    start: dt.datetime,
    end: dt.datetime,
    billed: set[tuple[BilledKind, dt.datetime]],
    product_name: str,
) -> list[Charge]:
    """For each change that took effect inside the period by ``at``: a credit for the rest
    of the period at the old plan and quantity, and a charge for it at the new ones."""
    found: list[Charge] = []
    for change in changes:
        when = _effective(change)
        if not (start < when < end and when <= ctx.at and _immediate(change)):
            continue
        if (BilledKind.PRORATION, when) in billed:
            continue
        before = [c for c in changes if c.id < change.id]
        old_plan_id, old_quantity = state_at(before, when)
        new_plan_id, new_quantity = state_at([*before, change], when)
        old_plan = ctx.plan(old_plan_id) if old_plan_id else None
        new_plan = ctx.plan(new_plan_id) if new_plan_id else None
        if old_plan is None or new_plan is None:
            continue
        span = f"{when:%d %b %Y %H:%M} to {end:%d %b %Y}"
        credit, owed = _prorated(
            prices, old_plan, old_quantity or 1, start, end, when, subscription.licence_only
        )
        found.append(
            Charge(BilledKind.PRORATION, LineKind.PRORATION, subscription, old_plan, when, end,
                   f"{product_name} · {old_plan.name}, quantity {old_quantity or 1}, unused {span}",
                   Decimal(-1), None, None, -credit, tuple(-a for a in owed))
        )  # fmt: skip
        if change.kind != "cancelled":
            charge, owed = _prorated(
                prices, new_plan, new_quantity or 1, start, end, when, subscription.licence_only
            )
            found.append(
                Charge(BilledKind.PRORATION, LineKind.PRORATION, subscription, new_plan, when, end,
                       f"{product_name} · {new_plan.name}, quantity {new_quantity or 1}, {span}",
                       Decimal(1), None, None, charge, owed)
            )  # fmt: skip
    return found


# ------------------------------------------------------------------ invoices
def _series(marketplace: Marketplace) -> str:
    return marketplace.slug.upper()[:36]


def next_number(
    session: Session,
    marketplace_id: uuid.UUID,
    now: dt.datetime,
    *,
    credit_note: bool = False,
    count: int = 1,
) -> tuple[str, int, int]:
    """The next number of the marketplace's invoice (or credit note) series for ``now``'s
    year (the first of ``count`` consecutive ones): the counter row is locked and moved on in
    the caller's transaction, so numbers are gapless (a rolled-back issue gives its numbers
    back) and never given twice."""
    marketplace = session.get(Marketplace, marketplace_id)
    assert marketplace is not None
    series, year = _series(marketplace) + ("-CN" if credit_note else ""), now.year
    # the counter row exists before it is locked and incremented
    session.execute(_insert_counter(session, series, year))
    sequence = session.execute(
        sa.update(NumberSeries)
        .where(NumberSeries.series == series, NumberSeries.year == year)
        .values(last=NumberSeries.last + count)
        .returning(NumberSeries.last)
    ).scalar_one()
    return series, year, int(sequence) - count + 1


def _insert_counter(session: Session, series: str, year: int) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert(NumberSeries).values(series=series, year=year, last=0).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(NumberSeries).values(series=series, year=year, last=0).on_conflict_do_nothing()


def _seller(session: Session, marketplace_id: uuid.UUID, settings: BillingSettings | None) -> dict[str, Any]:
    marketplace = session.get(Marketplace, marketplace_id)
    assert marketplace is not None
    return {
        "name": marketplace.name,
        "legal_name": (settings.seller_legal_name if settings else "") or marketplace.name,
        "country": settings.seller_country if settings else None,
        "vat_number": settings.seller_vat_number if settings else None,
        "address": list(settings.seller_address or []) if settings else [],
        "email": marketplace.support_email,
        "payment_instructions": settings.payment_instructions if settings else "",
    }


def _buyer(organisation: Organisation) -> dict[str, Any]:
    return {
        "name": organisation.name,
        "legal_name": organisation.legal_name,
        "country": organisation.country,
        "vat_number": organisation.vat_number,
        "address": [
            line
            for line in (
                organisation.address_line1,
                organisation.address_line2,
                " ".join(p for p in (organisation.postal_code, organisation.city) if p),
                organisation.region,
            )
            if line
        ],
        # the same address in its parts, for the e-invoice
        "street": [line for line in (organisation.address_line1, organisation.address_line2) if line],
        "postal_code": organisation.postal_code,
        "city": organisation.city,
        "region": organisation.region,
        "email": organisation.billing_email,
    }


@dataclasses.dataclass(frozen=True)
class Issued:
    """An invoice a run issued: its number and how many lines it has."""

    id: uuid.UUID
    number: str
    lines: int


def _invoice_rows(
    ctx: RunContext, customer: Organisation, currency: str, charges: list[Charge]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One customer's charges in one currency as an invoice row and its line rows, taxed,
    not yet numbered (written with Core: a run writes hundreds of thousands of lines)."""
    invoice_id = uuid.uuid4()
    lines = [
        {
            "id": uuid.uuid4(),
            "invoice_id": invoice_id,
            "position": position,
            "kind": charge.kind,
            "description": charge.description[:300],
            "subscription_id": charge.subscription.id,
            "product_id": charge.subscription.product_id,
            "vendor_id": ctx.product(charge.subscription.product_id)[1],
            "plan_id": charge.plan.id,
            "period_start": charge.period_start,
            "period_end": charge.period_end,
            "quantity": charge.quantity,
            "unit": charge.unit,
            "unit_price": charge.unit_price,
            "amount": charge.amount,
            "revenue_split": ctx.split(charge),
        }
        for position, charge in enumerate(charges)
    ]
    subtotal = sum((c.amount for c in charges), ZERO)
    rule = ctx.rule(customer.marketplace_id, customer.country, customer.vat_number)
    tax = round_to_minor(subtotal * rule.rate / 100, currency)
    invoice = {
        "id": invoice_id,
        "marketplace_id": customer.marketplace_id,
        "customer_id": customer.id,
        "billing_run_id": ctx.run_id,
        "currency": currency,
        "buyer": _buyer(customer),
        "seller": ctx.seller(customer.marketplace_id),
        "subtotal": subtotal,
        "tax_total": tax,
        "total": subtotal + tax,
        "tax_rate": rule.rate,
        "tax_rule": rule.text,
        "reminders_sent": 0,
        "created_at": ctx.now,
        "updated_at": ctx.now,
    }
    return invoice, lines


def _copy_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


def _bulk_insert(session: Session, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows: with COPY on PostgreSQL (one round trip), else an executemany. A
    duplicate key fails the whole statement as an IntegrityError, like an INSERT would."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        connection.execute(table.insert(), rows)
        return
    columns = list(rows[0])
    raw = connection.connection.driver_connection
    assert raw is not None
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([_copy_value(v) for v in row.values()])
    except psycopg.errors.UniqueViolation as exc:
        raise IntegrityError(statement, None, exc) from exc


def bill_customers(
    session: Session, ctx: RunContext, marketplace_id: uuid.UUID, customer_ids: Sequence[uuid.UUID]
) -> list[Issued]:
    """Bill customer organisations of one marketplace up to ``ctx.at`` (the caller commits).
    Subscriptions another run holds are skipped (``SKIP LOCKED``): that run bills them."""
    at = ctx.at
    subscriptions = list(
        session.scalars(
            sa.select(Subscription)
            .where(
                Subscription.marketplace_id == marketplace_id,
                Subscription.customer_id.in_(customer_ids),
                Subscription.status.in_(BILLABLE),
                Subscription.billing_anchor <= at,
            )
            .order_by(Subscription.customer_id, Subscription.created_at, Subscription.id)
            .with_for_update(skip_locked=True)
        )
    )
    if not subscriptions:
        return []
    # usage batches in flight finish first, and new ones wait until this chunk commits: the
    # usage read below is all there will be for what it bills (see cmw.usage.ingest)
    usage_lock(session, exclusive=True)
    ids = [s.id for s in subscriptions]
    billed: dict[uuid.UUID, set[tuple[BilledKind, dt.datetime]]] = defaultdict(set)
    for subscription_id, kind, start in session.execute(
        sa.select(BilledItem.subscription_id, BilledItem.kind, BilledItem.period_start).where(
            BilledItem.subscription_id.in_(ids)
        )
    ):
        billed[subscription_id].add((kind, _aware(start)))
    changes: dict[uuid.UUID, list[SubscriptionChange]] = defaultdict(list)
    for change in session.scalars(
        sa.select(SubscriptionChange)
        .where(SubscriptionChange.subscription_id.in_(ids))
        .order_by(SubscriptionChange.id)
    ):
        changes[change.subscription_id].append(change)
    usage: dict[uuid.UUID, list[UsageRow]] = defaultdict(list)
    for subscription_id, metric, hour, quantity in session.execute(
        sa.select(
            UsageHourly.subscription_id, UsageHourly.metric, UsageHourly.hour, UsageHourly.quantity
        ).where(UsageHourly.subscription_id.in_(ids), UsageHourly.hour < at)
    ):
        usage[subscription_id].append((metric, _aware(hour), Decimal(quantity)))
    redeemed = {
        redemption.subscription_id: (redemption, coupon)
        for redemption, coupon in session.execute(
            sa.select(CouponRedemption, Coupon)
            .join(Coupon, Coupon.id == CouponRedemption.coupon_id)
            .where(CouponRedemption.subscription_id.in_(ids))
        ).all()
    }
    # a machine that failed without ever running is not charged for (see FailedDeployments)
    unrun = deployments.never_ran(session, ids)
    grouped: dict[tuple[uuid.UUID, str], list[Charge]] = defaultdict(list)
    for subscription in subscriptions:
        if subscription.id in unrun:
            continue
        for charge in charges_for(
            ctx,
            subscription,
            changes[subscription.id],
            billed[subscription.id],
            usage[subscription.id],
            redeemed.get(subscription.id),
        ):
            grouped[(subscription.customer_id, charge.plan.currency)].append(charge)
    if not grouped:
        return []
    customers = {
        c.id: c
        for c in session.scalars(sa.select(Organisation).where(Organisation.id.in_({k[0] for k in grouped})))
    }
    ordered = sorted(grouped.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))
    rows = [
        _invoice_rows(ctx, customers[customer_id], currency, charges)
        for (customer_id, currency), charges in ordered
    ]
    # numbered in one go, gapless: the series' row is locked until this transaction ends
    series, year, first = next_number(session, marketplace_id, ctx.now, count=len(rows))
    settings = ctx.settings(marketplace_id)
    due = ctx.now + (dt.timedelta(days=settings.payment_terms_days) if settings else PAYMENT_TERMS)
    for offset, (invoice, _lines) in enumerate(rows):
        invoice.update(
            series=series,
            year=year,
            sequence=first + offset,
            number=f"{series}-{year}-{first + offset:06d}",
            status=InvoiceStatus.ISSUED,
            issued_at=ctx.now,
            due_at=due,
        )
    session.execute(sa.insert(Invoice), [invoice for invoice, _ in rows])
    _bulk_insert(session, InvoiceLine.__table__, [line for _, lines in rows for line in lines])
    items: dict[tuple[uuid.UUID, BilledKind, dt.datetime], uuid.UUID] = {}
    for (invoice, _lines), (_key, charges) in zip(rows, ordered, strict=True):
        for charge in charges:
            items.setdefault((charge.subscription.id, charge.billed, charge.period_start), invoice["id"])
    _bulk_insert(
        session,
        BilledItem.__table__,
        [
            {"subscription_id": s, "kind": k, "period_start": p, "invoice_id": i, "billed_at": ctx.now}
            for (s, k, p), i in items.items()
        ],
    )
    for invoice, _lines in rows:
        emit(
            session,
            "invoice.issued",
            {
                "invoice_id": str(invoice["id"]),
                "customer_id": str(invoice["customer_id"]),
                "number": invoice["number"],
                "total": format_amount(invoice["total"]),
                "currency": invoice["currency"],
                "due_at": due.isoformat(),
            },
            marketplace_id=invoice["marketplace_id"],
        )
    session.flush()
    return [Issued(invoice["id"], invoice["number"], len(lines)) for invoice, lines in rows]


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


#: customers billed in one transaction
CHUNK = 100


def run(
    session_factory: Callable[[], Session], at: dt.datetime | None = None, *, now: dt.datetime | None = None
) -> RunReport:
    """Bill every customer up to ``at`` (default: now). Safe to repeat and to race: a chunk
    that meets what a racing run billed first is done again customer by customer, and a
    customer whose charges another run holds is left to it."""
    now = now or utcnow()
    at = at or now
    if at > now:
        raise BillingError("at", "a billing run cannot bill the future: use a time up to now")
    report = RunReport()
    started = time.perf_counter()
    with session_factory() as session:
        billing_run = BillingRun(id=uuid.uuid4(), at=at)
        session.add(billing_run)
        session.commit()
        report.run_id = billing_run.id
        customers = session.execute(
            sa.select(Subscription.marketplace_id, Subscription.customer_id)
            .where(Subscription.status.in_(BILLABLE), Subscription.billing_anchor <= at)
            .distinct()
            .order_by(Subscription.marketplace_id, Subscription.customer_id)
        ).all()
    by_marketplace: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for marketplace_id, customer_id in customers:
        by_marketplace[marketplace_id].append(customer_id)
    ctx = RunContext(session_factory, report.run_id, at, now)

    def bill(marketplace_id: uuid.UUID, chunk: Sequence[uuid.UUID]) -> bool:
        with session_factory() as session:
            try:
                invoices = bill_customers(session, ctx, marketplace_id, chunk)
                session.commit()
            except IntegrityError:
                session.rollback()
                return False
            report.invoices += [i.number for i in invoices]
            report.lines += sum(i.lines for i in invoices)
            return True

    try:
        for marketplace_id, ids in by_marketplace.items():
            for offset in range(0, len(ids), CHUNK):
                chunk = ids[offset : offset + CHUNK]
                if bill(marketplace_id, chunk):
                    continue
                for customer_id in chunk:  # a racing run billed part of it first
                    if not bill(marketplace_id, [customer_id]):
                        report.skipped_customers += 1
    except Exception as exc:
        with session_factory() as session:
            failed = session.get(BillingRun, report.run_id)
            assert failed is not None
            failed.status, failed.error, failed.finished_at = "failed", str(exc)[:2000], utcnow()
            session.commit()
        metrics.BILLING_RUNS.labels("failed").observe(time.perf_counter() - started)
        raise
    finally:
        ctx.close()
    with session_factory() as session:
        done = session.get(BillingRun, report.run_id)
        assert done is not None
        done.status, done.finished_at = "finished", utcnow()
        done.invoices, done.lines = len(report.invoices), report.lines
        session.commit()
    metrics.BILLING_RUNS.labels("finished").observe(time.perf_counter() - started)
    log.info("billing run %s: %d invoices, %d lines", report.run_id, len(report.invoices), report.lines)
    return report
