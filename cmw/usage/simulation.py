"""Price simulation for vendors: the prices of a product's draft (its working version, not
yet published) applied to the last N days of its customers' real usage, beside what the
published prices make of the same days: each customer's bill and the revenue.

A customer's bill for the window is rated with the catalog's one rating function: the
recurring fees for the share of their period the window is (a month is 30 days, a year
365), per-unit fees times the subscription's quantity, and each metered component on the
window's usage, less its included quantity; each line rounded as on an invoice. Setup
fees are left out (they are paid once). A subscription whose plan code the draft no
longer sells is listed apart.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections import defaultdict
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.accounts.models import Organisation
from cmw.billing.models import UsageHourly
from cmw.billing.service import hour_floor
from cmw.catalog.models import BillingPeriod, ComponentKind, Plan, Product, ProductVersion
from cmw.catalog.pricing import rate_component, spec_of
from cmw.db import utcnow
from cmw.money import round_to_minor
from cmw.orders.models import Subscription, SubscriptionStatus

ZERO = Decimal(0)
PERIOD_DAYS = {BillingPeriod.MONTH: Decimal(30), BillingPeriod.YEAR: Decimal(365)}


@dataclasses.dataclass(frozen=True)
class Bill:
    subscription_id: uuid.UUID
    customer: str
    plan: str
    quantity: int
    currency: str
    current: Decimal
    simulated: Decimal

    @property
    def difference(self) -> Decimal:
        return self.simulated - self.current


@dataclasses.dataclass
class Simulation:
    days: int
    start: dt.datetime
    end: dt.datetime
    draft_version: int | None
    bills: list[Bill] = dataclasses.field(default_factory=list)
    #: plan codes customers are on that the draft does not sell
    not_in_draft: list[str] = dataclasses.field(default_factory=list)

    def totals(self) -> dict[str, tuple[Decimal, Decimal]]:
        sums: dict[str, list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
        for bill in self.bills:
            sums[bill.currency][0] += bill.current
            sums[bill.currency][1] += bill.simulated
        return {currency: (pair[0], pair[1]) for currency, pair in sorted(sums.items())}


def window_bill(plan: Plan, quantity: int, used: dict[str, Decimal], days: int) -> Decimal:
    """What ``days`` of a subscription cost on ``plan``, with the window's usage."""
    share = Decimal(days) / PERIOD_DAYS[plan.billing_period]
    total = ZERO
    for c in plan.components:
        spec = spec_of(c)
        if c.kind is ComponentKind.FLAT:
            total += round_to_minor(rate_component(spec, Decimal(1)) * share, plan.currency)
        elif c.kind is ComponentKind.PER_UNIT:
            total += round_to_minor(rate_component(spec, Decimal(quantity)) * share, plan.currency)
        elif c.kind is ComponentKind.METERED and c.metric is not None:
            total += round_to_minor(rate_component(spec, used.get(c.metric, ZERO)), plan.currency)
    return total


def simulate(
    session: Session, product: Product, days: int = 30, now: dt.datetime | None = None
) -> Simulation:
    now = now or utcnow()
    start = now - dt.timedelta(days=days)
    draft = (
        session.get(ProductVersion, product.working_version_id)
        if product.working_version_id and product.working_version_id != product.live_version_id
        else None
    )
    result = Simulation(days, start, now, draft.number if draft is not None else None)
    draft_plans = {p.code: p for p in (draft.plans if draft is not None else [])}
    subscriptions = session.scalars(
        sa.select(Subscription)
        .where(
            Subscription.product_id == product.id,
            Subscription.status.in_(
                [SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE, SubscriptionStatus.CANCELLED]
            ),
            Subscription.created_at < now,
            sa.or_(Subscription.cancelled_at.is_(None), Subscription.cancelled_at > start),
        )
        .order_by(Subscription.created_at, Subscription.id)
    ).all()
    if not subscriptions:
        return result
    plans = {
        p.id: p
        for p in session.scalars(sa.select(Plan).where(Plan.id.in_({s.plan_id for s in subscriptions})))
    }
    names = dict(
        session.execute(
            sa.select(Organisation.id, Organisation.name).where(
                Organisation.id.in_({s.customer_id for s in subscriptions})
            )
        ).all()
    )
    used: dict[uuid.UUID, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for subscription_id, metric, quantity in session.execute(
        sa.select(UsageHourly.subscription_id, UsageHourly.metric, UsageHourly.quantity).where(
            UsageHourly.subscription_id.in_([s.id for s in subscriptions]),
            UsageHourly.hour >= hour_floor(start),
            UsageHourly.hour < now,
        )
    ):
        used[subscription_id][metric] += quantity
    missing: set[str] = set()
    for subscription in subscriptions:
        plan = plans[subscription.plan_id]
        proposed = draft_plans.get(plan.code) if draft is not None else plan
        if proposed is None:
            missing.add(plan.code)
            continue
        usage = used.get(subscription.id, {})
        result.bills.append(
            Bill(
                subscription_id=subscription.id,
                customer=names.get(subscription.customer_id, ""),
                plan=plan.code,
                quantity=subscription.quantity,
                currency=plan.currency,
                current=window_bill(plan, subscription.quantity, usage, days),
                simulated=window_bill(proposed, subscription.quantity, usage, days),
            )
        )
    result.not_in_draft = sorted(missing)
    return result
