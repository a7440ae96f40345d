"""Plan validation and rating: worked examples, and properties of tier definitions
checked with hypothesis."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmw.catalog.models import BillingPeriod, ComponentKind, PricingModel
from cmw.catalog.pricing import (
    ComponentSpec,
    PlanSpec,
    PricingError,
    Tier,
    rate_component,
    rate_tiers,
    validate_plan,
    validate_plans,
    validate_tiers,
)
from cmw.money import round_to_minor

D = Decimal

# ------------------------------------------------------------- strategies
prices = st.decimals(min_value=0, max_value=1000, places=4, allow_nan=False, allow_infinity=False)
boundaries = st.lists(st.integers(min_value=1, max_value=100_000), min_size=0, max_size=6, unique=True).map(
    sorted
)


@st.composite
def tier_sets(draw: st.DrawFn) -> list[Tier]:
    """Valid tiers: from 0, contiguous, increasing, the last open-ended."""
    cuts = [D(b) for b in draw(boundaries)]
    starts = [D(0), *cuts]
    ends: list[Decimal | None] = [*cuts, None]
    return [
        Tier(start=s, up_to=e, unit_price=draw(prices), flat_fee=draw(prices))
        for s, e in zip(starts, ends, strict=True)
    ]


# ------------------------------------------------------------ properties
@given(tier_sets())
def test_contiguous_tiers_from_zero_are_valid(tiers: list[Tier]) -> None:
    assert validate_tiers(tiers, "tiers") == tuple(tiers)


@given(tier_sets().filter(lambda t: len(t) >= 2), st.data())
def test_a_gap_or_an_overlap_is_refused(tiers: list[Tier], data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=1, max_value=len(tiers) - 1))
    shift = data.draw(st.sampled_from([D(-1), D("0.5"), D(3)]))
    broken = list(tiers)
    broken[index] = Tier(tiers[index].start + shift, tiers[index].up_to, tiers[index].unit_price)
    with pytest.raises(PricingError) as caught:
        validate_tiers(broken, "tiers")
    assert caught.value.field.startswith("tiers.")
    assert (
        "gap" in caught.value.message
        or "overlap" in caught.value.message
        or "greater" in caught.value.message
    )


@given(tier_sets(), st.data())
def test_negative_prices_are_refused(tiers: list[Tier], data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(tiers) - 1))
    broken = list(tiers)
    broken[index] = Tier(tiers[index].start, tiers[index].up_to, -tiers[index].unit_price - D("0.01"))
    with pytest.raises(PricingError, match="negative"):
        validate_tiers(broken, "tiers")


@given(tier_sets())
def test_a_closed_last_tier_is_refused(tiers: list[Tier]) -> None:
    last = tiers[-1]
    closed = [*tiers[:-1], Tier(last.start, last.start + 10, last.unit_price)]
    with pytest.raises(PricingError, match="open-ended"):
        validate_tiers(closed, "tiers")


def _tier_of(tiers: list[Tier], unit: int) -> Tier:
    return next(t for t in tiers if t.start < unit and (t.up_to is None or unit <= t.up_to))


@given(tier_sets(), st.integers(min_value=0, max_value=3000))
def test_graduated_charges_each_unit_at_its_tiers_price(tiers: list[Tier], quantity: int) -> None:
    expected = sum((_tier_of(tiers, unit).unit_price for unit in range(1, quantity + 1)), D(0))
    touched = {id(_tier_of(tiers, unit)) for unit in range(1, quantity + 1)}
    expected += sum((t.flat_fee for t in tiers if id(t) in touched), D(0))
    assert rate_tiers(PricingModel.GRADUATED, tiers, D(quantity)) == expected


@given(tier_sets(), st.integers(min_value=1, max_value=300_000))
def test_volume_charges_every_unit_at_the_price_of_the_total(tiers: list[Tier], quantity: int) -> None:
    tier = _tier_of(tiers, quantity)
    assert rate_tiers(PricingModel.VOLUME, tiers, D(quantity)) == quantity * tier.unit_price + tier.flat_fee


@given(tier_sets(), st.integers(min_value=0, max_value=50_000), st.integers(min_value=0, max_value=50_000))
def test_graduated_never_decreases_with_more_usage(tiers: list[Tier], a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert rate_tiers(PricingModel.GRADUATED, tiers, D(low)) <= rate_tiers(
        PricingModel.GRADUATED, tiers, D(high)
    )


# ------------------------------------------------------------ worked examples
def _metered(model: PricingModel, **kw: object) -> ComponentSpec:
    return ComponentSpec(
        kind=ComponentKind.METERED,
        label="Traffic",
        metric="bandwidth.gb",
        unit="GB",
        pricing_model=model,
        **kw,
    )  # type: ignore[arg-type]


TIERS = (Tier(D(0), D(100), D("0.10")), Tier(D(100), D(1000), D("0.08")), Tier(D(1000), None, D("0.05")))


@pytest.mark.parametrize(
    ("model", "included", "usage", "expected"),
    [
        # 100 x 0.10 + 50 x 0.08
        (PricingModel.GRADUATED, "0", "150", "14.00"),
        # 150 GB all at the second tier's price
        (PricingModel.VOLUME, "0", "150", "12.00"),
        # 50 free, then 100 x 0.10
        (PricingModel.GRADUATED, "50", "150", "10.00"),
        # exactly on a boundary: unit 100 is still in the first tier
        (PricingModel.VOLUME, "0", "100", "10.00"),
        (PricingModel.GRADUATED, "0", "1200", "92.00"),
        (PricingModel.GRADUATED, "0", "0", "0"),
        (PricingModel.GRADUATED, "200", "150", "0"),
    ],
)
def test_metered_examples(model: PricingModel, included: str, usage: str, expected: str) -> None:
    component = _metered(model, tiers=TIERS, included_quantity=D(included))
    assert rate_component(component, D(usage)) == D(expected)


def test_per_unit_metered_and_fixed_components() -> None:
    cpu = _metered(PricingModel.PER_UNIT, unit_price=D("0.041666"), included_quantity=D(10))
    assert rate_component(cpu, D("730.5")) == D("720.5") * D("0.041666")
    assert round_to_minor(rate_component(cpu, D("730.5")), "EUR") == D("30.02")
    seats = ComponentSpec(kind=ComponentKind.PER_UNIT, label="Seats", unit_price=D("4.99"))
    assert rate_component(seats, D(12)) == D("59.88")
    flat = ComponentSpec(kind=ComponentKind.FLAT, label="Base", unit_price=D(49))
    assert rate_component(flat, D(1)) == D(49)


def _plan(*components: ComponentSpec, currency: str = "EUR", code: str = "basic") -> PlanSpec:
    return PlanSpec(
        code=code, name="Basic", currency=currency, billing_period=BillingPeriod.MONTH, components=components
    )


FLAT = ComponentSpec(kind=ComponentKind.FLAT, label="Base fee", unit_price=D(10))


@pytest.mark.parametrize(
    ("plan", "field", "message"),
    [
        (_plan(FLAT, currency="EURO"), "currency", "not an ISO 4217"),
        (_plan(FLAT, currency="XTS"), "currency", "not a currency prices"),
        (_plan(), "components", "at least one"),
        (
            _plan(ComponentSpec(kind=ComponentKind.FLAT, label="x", unit_price=D(-1))),
            "components.0.unit_price",
            "negative",
        ),
        (
            _plan(ComponentSpec(kind=ComponentKind.FLAT, label="x")),
            "components.0.unit_price",
            "needs a price",
        ),
        (_plan(_metered(PricingModel.GRADUATED)), "components.0.tiers", "at least one tier"),
        (
            _plan(_metered(PricingModel.GRADUATED, tiers=TIERS, unit_price=D(1))),
            "components.0.unit_price",
            "tiers",
        ),
        (
            _plan(
                ComponentSpec(
                    kind=ComponentKind.METERED,
                    label="x",
                    metric="Bad Metric",
                    unit="GB",
                    pricing_model=PricingModel.PER_UNIT,
                    unit_price=D(1),
                )
            ),
            "components.0.metric",
            "bandwidth.gb",
        ),
        (
            _plan(
                _metered(PricingModel.PER_UNIT, unit_price=D(1)),
                _metered(PricingModel.PER_UNIT, unit_price=D(2)),
            ),
            "components.1.metric",
            "already priced",
        ),
        (
            _plan(
                ComponentSpec(
                    kind=ComponentKind.PER_UNIT,
                    label="Seats",
                    unit_price=D(1),
                    min_quantity=5,
                    max_quantity=2,
                )
            ),
            "components.0.max_quantity",
            "below",
        ),
        (_plan(FLAT, code="Not A Code"), "code", "lowercase"),
        (
            _plan(
                ComponentSpec(kind=ComponentKind.SETUP, label="a", unit_price=D(1)),
                ComponentSpec(kind=ComponentKind.SETUP, label="b", unit_price=D(1)),
            ),
            "components.1.kind",
            "one setup",
        ),
    ],
)
def test_invalid_plans_name_the_field(plan: PlanSpec, field: str, message: str) -> None:
    with pytest.raises(PricingError) as caught:
        validate_plan(plan)
    assert caught.value.field == field
    assert message in caught.value.message


def test_plan_codes_are_unique_and_currency_is_normalised() -> None:
    checked = validate_plan(_plan(FLAT, currency="eur"))
    assert checked.currency == "EUR"
    with pytest.raises(PricingError) as caught:
        validate_plans([_plan(FLAT), _plan(FLAT)])
    assert caught.value.field == "plans.1.code"


def test_rounding_is_half_up_to_the_minor_unit() -> None:
    assert round_to_minor(D("2.345"), "EUR") == D("2.35")
    assert round_to_minor(D("2.344999"), "EUR") == D("2.34")
    assert round_to_minor(D("1234.5"), "JPY") == D("1235")
    assert round_to_minor(D("1.2345"), "KWD") == D("1.235")
