"""Properties of the rating and proration billing relies on (hypothesis): tiers rated
exactly, proration over a full period is the full price, an upgrade undone at the same
instant costs nothing, and lines rounded one by one add up to the total."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from cmw.billing.service import prorate
from cmw.catalog.models import PricingModel
from cmw.catalog.pricing import Tier, rate_tiers
from cmw.money import round_to_minor

D = Decimal
prices = st.decimals(min_value=D("0"), max_value=D("100"), places=4, allow_nan=False, allow_infinity=False)


@st.composite
def tier_tables(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = sorted(set(draw(st.lists(st.integers(min_value=1, max_value=200), min_size=0, max_size=4))))
    starts = [0, *bounds]
    tiers = []
    for i, start in enumerate(starts):
        up_to = D(starts[i + 1]) if i + 1 < len(starts) else None
        tiers.append(Tier(D(start), up_to, draw(prices), draw(st.sampled_from([D(0), D(0), D("1.5")]))))
    return tuple(tiers)


def _tier_of(tiers: tuple[Tier, ...], unit: int) -> Tier:
    return next(t for t in tiers if unit > t.start and (t.up_to is None or unit <= t.up_to))


@settings(max_examples=300, deadline=None)
@given(tiers=tier_tables(), quantity=st.integers(min_value=0, max_value=400))
def test_graduated_tiers_are_each_unit_at_its_tier_price(tiers: tuple[Tier, ...], quantity: int) -> None:
    expected = sum((_tier_of(tiers, unit).unit_price for unit in range(1, quantity + 1)), D(0))
    expected += sum((t.flat_fee for t in tiers if quantity > t.start), D(0))
    assert rate_tiers(PricingModel.GRADUATED, tiers, D(quantity)) == expected


@settings(max_examples=300, deadline=None)
@given(tiers=tier_tables(), quantity=st.integers(min_value=1, max_value=400))
def test_volume_tiers_price_every_unit_at_the_reached_tier(tiers: tuple[Tier, ...], quantity: int) -> None:
    reached = _tier_of(tiers, quantity)
    assert (
        rate_tiers(PricingModel.VOLUME, tiers, D(quantity))
        == quantity * reached.unit_price + reached.flat_fee
    )


starts = st.datetimes(
    min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2030, 1, 1), timezones=st.just(dt.UTC)
)


@settings(max_examples=300, deadline=None)
@given(amount=prices, start=starts, days=st.integers(min_value=28, max_value=366), at=st.floats(0, 1))
def test_proration(amount: Decimal, start: dt.datetime, days: int, at: float) -> None:
    end = start + dt.timedelta(days=days)
    assert prorate(amount, start, end, start) == amount  # the full period is the full price
    assert prorate(amount, start, end, end) == 0
    when = start + dt.timedelta(seconds=int(at * days * 86400))
    old, new = amount, amount * 3 + D("0.01")
    # up, then back at the same instant: credit old, charge new, credit new, charge old
    lines = [
        -round_to_minor(prorate(old, start, end, when), "EUR"),
        round_to_minor(prorate(new, start, end, when), "EUR"),
        -round_to_minor(prorate(new, start, end, when), "EUR"),
        round_to_minor(prorate(old, start, end, when), "EUR"),
    ]
    assert sum(lines) == 0
    # the part used and the part left add up to the whole, to the cent after rounding each
    used = amount - prorate(amount, start, end, when)
    assert abs(
        round_to_minor(used, "EUR")
        + round_to_minor(prorate(amount, start, end, when), "EUR")
        - round_to_minor(amount, "EUR")
    ) <= D("0.01")
