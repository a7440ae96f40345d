"""Live costs: what a subscription costs in its current period so far, and a projection to
the period's end, rated as the billing run will rate it (the catalog's one rating
function, lines rounded one by one); and per customer, the sum over its subscriptions,
held against the customer's budget.

Usage is read from the hourly roll-up ingestion writes in the same transaction as the
records, so a cost reflects a record as soon as its batch is acknowledged. The hours of a
period are those billing gives it (period boundaries rounded down to the hour).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.billing.models import UsageHourly
from cmw.billing.service import hour_floor
from cmw.catalog.models import ComponentKind, Plan, Product
from cmw.catalog.pricing import rate_component
from cmw.db import utcnow
from cmw.marketplaces import pricing
from cmw.money import round_to_minor
from cmw.orders.models import Subscription, SubscriptionStatus
from cmw.orders.pricing import charged

ZERO = Decimal(0)
#: subscriptions that cost something now
COSTING = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)


@dataclasses.dataclass(frozen=True)
class CostLine:
    label: str
    kind: str  # "fee", "per_unit" or "usage"
    metric: str | None
    quantity: Decimal
    unit: str | None
    amount: Decimal
    #: at the period's end, if usage goes on at the rate so far
    projected: Decimal


@dataclasses.dataclass(frozen=True)
class LiveCost:
    subscription_id: uuid.UUID
    product: str
    plan: str
    currency: str
    period_start: dt.datetime
    period_end: dt.datetime
    at: dt.datetime
    lines: tuple[CostLine, ...]
    total: Decimal
    projected_total: Decimal


def _usage(
    session: Session, subscriptions: Iterable[Subscription], now: dt.datetime
) -> dict[uuid.UUID, dict[str, Decimal]]:
    """Each subscription's usage per metric in the hours of its current period up to now."""
    found: dict[uuid.UUID, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    hours = {
        s.id: (hour_floor(s.current_period_start), hour_floor(s.current_period_end)) for s in subscriptions
    }
    if not hours:
        return found
    rows = session.execute(
        sa.select(
            UsageHourly.subscription_id, UsageHourly.metric, UsageHourly.hour, UsageHourly.quantity
        ).where(
            UsageHourly.subscription_id.in_(list(hours)),
            UsageHourly.hour >= min(low for low, _high in hours.values()),
            UsageHourly.hour <= now,
        )
    )
    for subscription_id, metric, hour, quantity in rows:
        low, high = hours[subscription_id]
        if low <= hour < high:
            found[subscription_id][metric] += quantity
    return found


def costs(
    session: Session, subscriptions: list[Subscription], now: dt.datetime | None = None
) -> list[LiveCost]:
    """The live cost of each subscription (trials and ended ones cost nothing now)."""
    now = now or utcnow()
    live = [s for s in subscriptions if s.status in COSTING]
    plans = {p.id: p for p in session.scalars(sa.select(Plan).where(Plan.id.in_({s.plan_id for s in live})))}
    names = dict(
        session.execute(
            sa.select(Product.id, Product.slug).where(Product.id.in_({s.product_id for s in live}))
        ).all()
    )
    used = _usage(session, live, now)
    prices: dict[tuple[uuid.UUID, uuid.UUID], pricing.PriceList] = {}
    found = []
    for subscription in live:
        plan = plans[subscription.plan_id]
        key = (subscription.marketplace_id, subscription.product_id)
        if key not in prices:
            prices[key] = pricing.price_list_of(session, *key)
        start, end = subscription.current_period_start, subscription.current_period_end
        at = min(max(now, start), end)
        elapsed = (at - hour_floor(start)).total_seconds()
        whole = (end - hour_floor(start)).total_seconds()
        # how much more usage the rest of the period brings at the rate so far
        stretch = Decimal(whole) / Decimal(elapsed) if elapsed > 3600 else None
        lines = []
        for index, c in charged(plan, subscription.licence_only):
            spec = prices[key].spec(plan, index)
            if c.kind is ComponentKind.FLAT:
                amount = round_to_minor(rate_component(spec, Decimal(1)), plan.currency)
                lines.append(CostLine(c.label, "fee", None, Decimal(1), None, amount, amount))
            elif c.kind is ComponentKind.PER_UNIT:
                quantity = Decimal(subscription.quantity)
                amount = round_to_minor(rate_component(spec, quantity), plan.currency)
                lines.append(CostLine(c.label, "per_unit", None, quantity, c.unit, amount, amount))
            elif c.kind is ComponentKind.METERED:
                assert c.metric is not None
                quantity = used[subscription.id].get(c.metric, ZERO)
                amount = round_to_minor(rate_component(spec, quantity), plan.currency)
                expected = quantity * stretch if stretch is not None else quantity
                projected = round_to_minor(rate_component(spec, expected), plan.currency)
                lines.append(CostLine(c.label, "usage", c.metric, quantity, c.unit, amount, projected))
        found.append(
            LiveCost(
                subscription_id=subscription.id,
                product=names.get(subscription.product_id, ""),
                plan=plan.name,
                currency=plan.currency,
                period_start=start,
                period_end=end,
                at=now,
                lines=tuple(lines),
                total=sum((line.amount for line in lines), ZERO),
                projected_total=sum((line.projected for line in lines), ZERO),
            )
        )
    return found


def of_customer(session: Session, customer_id: uuid.UUID, now: dt.datetime | None = None) -> list[LiveCost]:
    subscriptions = session.scalars(
        sa.select(Subscription)
        .where(Subscription.customer_id == customer_id, Subscription.status.in_(COSTING))
        .order_by(Subscription.created_at, Subscription.id)
    ).all()
    return costs(session, list(subscriptions), now)


def totals(found: Iterable[LiveCost]) -> dict[str, tuple[Decimal, Decimal]]:
    """Per currency: (so far, projected)."""
    sums: dict[str, list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
    for cost in found:
        sums[cost.currency][0] += cost.total
        sums[cost.currency][1] += cost.projected_total
    return {currency: (pair[0], pair[1]) for currency, pair in sums.items()}
