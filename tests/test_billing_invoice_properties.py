"""Whole invoices on PostgreSQL, property-based (hypothesis): for random plans (a flat fee,
a per-unit fee with a random quantity, a metered component with random graduated or
volume tiers and an included quantity), random hourly usage and a random change of
quantity mid-period, the billing run's invoices total the sum of their rounded lines,
the usage is rated exactly as the tiers say (checked unit by unit), and a change undone
at the same instant costs nothing."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from cmw.billing import service as billing
from cmw.billing.models import Invoice, InvoiceLine, LineKind, UsageHourly
from cmw.catalog.models import BillingPeriod, ComponentKind, PricingModel
from cmw.catalog.pricing import ComponentSpec, PlanSpec, Tier
from cmw.marketplaces.service import platform
from cmw.orders import service as orders
from cmw.orders import subscriptions
from cmw.orders.models import Subscription
from tests import catalog_data

Factory = sessionmaker[Session]
D = Decimal
CENT = D("0.01")


def cents(amount: Decimal) -> Decimal:
    """Rounded as money is: half up to the cent."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


#: each example starts a month later than the one before, so runs never meet
_months = itertools.count()
_ids = itertools.count()

money = st.decimals(min_value=D(0), max_value=D(500), places=2, allow_nan=False, allow_infinity=False)
unit_prices = st.decimals(min_value=D(0), max_value=D(3), places=4, allow_nan=False, allow_infinity=False)


@st.composite
def tier_tables(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = sorted(set(draw(st.lists(st.integers(min_value=1, max_value=300), max_size=3))))
    starts = [0, *bounds]
    return tuple(
        Tier(
            D(start),
            D(starts[i + 1]) if i + 1 < len(starts) else None,
            draw(unit_prices),
            draw(st.sampled_from([D(0), D(0), D("2.50")])),
        )
        for i, start in enumerate(starts)
    )


def _unit_by_unit(model: PricingModel, tiers: tuple[Tier, ...], quantity: int) -> Decimal:
    """The oracle: each unit priced by the tier it falls in (graduated), or every unit at
    the tier the whole quantity reaches (volume), plus the flat fees of the tiers entered."""

    def tier_of(unit: int) -> Tier:
        return next(t for t in tiers if unit > t.start and (t.up_to is None or unit <= t.up_to))

    if quantity <= 0:
        return D(0)
    if model is PricingModel.VOLUME:
        reached = tier_of(quantity)
        return quantity * reached.unit_price + reached.flat_fee
    total = sum((tier_of(unit).unit_price for unit in range(1, quantity + 1)), D(0))
    return total + sum((t.flat_fee for t in tiers if quantity > t.start), D(0))


def _month(n: int) -> dt.datetime:
    year, month = divmod(n, 12)
    return dt.datetime(2030 + year, month + 1, 1, 8, 0, tzinfo=dt.UTC)


# No shrinking phase: every example writes to the one database, and shrinking reruns them
# for minutes; a failure reports the example as generated.
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    fee=money,
    seat_price=unit_prices,
    seats=st.integers(min_value=1, max_value=20),
    model=st.sampled_from([PricingModel.GRADUATED, PricingModel.VOLUME]),
    tiers=tier_tables(),
    included=st.integers(min_value=0, max_value=50),
    usage=st.lists(st.integers(min_value=0, max_value=120), min_size=1, max_size=12),
    change=st.sampled_from(["none", "once", "and back"]),
    new_seats=st.integers(min_value=1, max_value=20),
    when=st.floats(min_value=0.05, max_value=0.95),
)
def test_invoices_add_up_and_rate_usage_exactly(
    committed_db: Factory,
    fee: Decimal,
    seat_price: Decimal,
    seats: int,
    model: PricingModel,
    tiers: tuple[Tier, ...],
    included: int,
    usage: list[int],
    change: str,
    new_seats: int,
    when: float,
) -> None:
    n = next(_ids)
    start = _month(next(_months))
    metric = f"prop.{n}"
    plan = PlanSpec(
        code="p",
        name="P",
        currency="EUR",
        billing_period=BillingPeriod.MONTH,
        components=(
            ComponentSpec(kind=ComponentKind.FLAT, label="Fee", unit_price=fee),
            ComponentSpec(kind=ComponentKind.PER_UNIT, label="Seats", unit_price=seat_price, unit="seat"),
            ComponentSpec(
                kind=ComponentKind.METERED,
                label="Use",
                metric=metric,
                unit="GB",
                pricing_model=model,
                included_quantity=D(included),
                tiers=tiers,
            ),
        ),
    )
    with committed_db() as session:
        catalog_data.publish_product(session, f"prop-{n}", [plan])
        user, org = catalog_data.add_customer(session, f"prop-{n}@example.test", paying=True)
        placed = orders.place_order(
            session, platform(session), user, org,
            orders.OrderRequest(product=f"prop-{n}", plan="p", quantity=seats), now=start,
        )  # fmt: skip
        session.commit()
        subscription_id, customer_id = placed.subscription_id, org.id
        assert subscription_id is not None
    billing.run(committed_db, start, now=start)

    with committed_db() as session:
        subscription = session.get(Subscription, subscription_id)
        assert subscription is not None
        end = subscription.current_period_end
        period = end - start
        for hour, quantity in enumerate(usage):
            session.add(
                UsageHourly(
                    subscription_id=subscription_id,
                    metric=metric,
                    hour=start + dt.timedelta(hours=hour * 37),
                    quantity=D(quantity),
                )
            )
        at = start + dt.timedelta(seconds=int(period.total_seconds() * when))
        if change != "none" and new_seats != seats:
            subscriptions.change_quantity(session, subscription, new_seats, None, now=at)
            if change == "and back":
                subscriptions.change_quantity(session, subscription, seats, None, now=at)
        session.commit()
    billing.run(committed_db, end, now=end)

    with committed_db() as session:
        invoices = session.scalars(
            sa.select(Invoice)
            .where(Invoice.customer_id == customer_id)
            .order_by(Invoice.year, Invoice.sequence)
        ).all()
        lines_of: dict[uuid.UUID, list[InvoiceLine]] = {i.id: list(i.lines) for i in invoices}
    assert len(invoices) == 2
    for invoice in invoices:
        lines = lines_of[invoice.id]
        assert all(line.amount == line.amount.quantize(CENT) for line in lines)
        assert invoice.subtotal == sum((line.amount for line in lines), D(0))
        assert invoice.total == invoice.subtotal + invoice.tax_total

    first, second = (lines_of[i.id] for i in invoices)
    # in advance, for the first period: the fee and the seats, each rounded
    assert sorted(line.amount for line in first) == sorted([cents(fee), cents(seat_price * seats)]), [
        (line.kind, line.description, line.amount) for line in first
    ]
    # at its end: the usage, rated unit by unit, less what the plan includes
    expected = cents(_unit_by_unit(model, tiers, sum(usage) - included))
    rated: list[Any] = [line.amount for line in second if line.kind is LineKind.USAGE]
    assert sum(rated, D(0)) == expected
    prorations = [line.amount for line in second if line.kind is LineKind.PRORATION]
    if change == "and back" or new_seats == seats or change == "none":
        assert sum(prorations, D(0)) == 0  # undone at the same instant (or never done): free
    next_seats = new_seats if change == "once" else seats
    advance = [line.amount for line in second if line.kind in (LineKind.FEE, LineKind.PER_UNIT)]
    assert sorted(advance) == sorted([cents(fee), cents(seat_price * next_seats)])
