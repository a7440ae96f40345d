"""Plan definitions: validation, and rating a quantity against a price component.

:func:`validate_plan` is what the API and the demo data go through, so no invalid plan is
ever stored. :func:`rate_component` is the one pricing function: order price breakdowns,
cost estimates and billing all call it. Amounts are Decimal and unrounded here; rounding
to the currency's minor unit happens once, on invoice lines (``cmw.money``).

Tiers cover ``(from, up_to]``: with tiers 0-100 and 100-∞, unit 100 is in the first
tier and unit 101 in the second. The first tier starts at 0, each tier starts where the
previous one ends, and only the last is open-ended, so gaps and overlaps are refused.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from cmw.catalog.models import BillingPeriod, ComponentKind, Plan, PriceComponent, PricingModel
from cmw.money import PRICE_SCALE, CurrencyError, check_currency, format_amount

ZERO = Decimal(0)
METRIC = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
PLAN_CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")


class PricingError(ValueError):
    """An invalid plan definition; ``field`` is the dotted path of the offending value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class Tier:
    start: Decimal
    up_to: Decimal | None
    unit_price: Decimal
    flat_fee: Decimal = ZERO

    def as_json(self) -> dict[str, str | None]:
        return {
            "from": format_amount(self.start),
            "up_to": None if self.up_to is None else format_amount(self.up_to),
            "unit_price": format_amount(self.unit_price),
            "flat_fee": format_amount(self.flat_fee),
        }


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    kind: ComponentKind
    label: str
    unit_price: Decimal | None = None
    metric: str | None = None
    unit: str | None = None
    pricing_model: PricingModel | None = None
    included_quantity: Decimal = ZERO
    tiers: tuple[Tier, ...] = ()
    min_quantity: int | None = None
    max_quantity: int | None = None
    #: the machine's cost, not charged in the customer's own cloud
    infrastructure: bool = False


@dataclasses.dataclass(frozen=True)
class PlanSpec:
    code: str
    name: str
    currency: str
    billing_period: BillingPeriod
    components: tuple[ComponentSpec, ...]
    description: str = ""
    #: the plan's own VM (``cores``, ``ram_mib``) and data disk, instead of the target's
    vm_size: dict[str, int] | None = None
    data_disk_gib: int | None = None


# ---------------------------------------------------------------- validation
def validate_tiers(tiers: Sequence[Tier], field: str) -> tuple[Tier, ...]:
    if not tiers:
        raise PricingError(field, "a tiered price needs at least one tier")
    expected_start = ZERO
    for index, tier in enumerate(tiers):
        where = f"{field}.{index}"
        if tier.start != expected_start:
            what = "a gap" if tier.start > expected_start else "an overlap"
            raise PricingError(
                f"{where}.from",
                f"{what}: this tier must start at {expected_start}, where the previous one ends",
            )
        if tier.unit_price < 0 or tier.flat_fee < 0:
            raise PricingError(where, "prices must not be negative")
        last = index == len(tiers) - 1
        if tier.up_to is None:
            if not last:
                raise PricingError(f"{where}.up_to", "only the last tier may be open-ended")
        else:
            if tier.up_to <= tier.start:
                raise PricingError(f"{where}.up_to", "must be greater than from")
            if last:
                raise PricingError(f"{where}.up_to", "the last tier must be open-ended (up_to null)")
            expected_start = tier.up_to
    return tuple(tiers)


def validate_component(component: ComponentSpec, field: str) -> ComponentSpec:
    if not component.label.strip():
        raise PricingError(f"{field}.label", "must not be empty")
    if component.unit_price is not None and component.unit_price < 0:
        raise PricingError(f"{field}.unit_price", "must not be negative")
    if component.included_quantity < 0:
        raise PricingError(f"{field}.included_quantity", "must not be negative")
    kind = component.kind
    if kind is not ComponentKind.METERED:
        for name in ("metric", "pricing_model"):
            if getattr(component, name) is not None:
                raise PricingError(f"{field}.{name}", f"only metered components have a {name}")
        if component.tiers:
            raise PricingError(f"{field}.tiers", "only metered components have tiers")
        if component.included_quantity:
            raise PricingError(
                f"{field}.included_quantity", "only metered components include a free quantity"
            )
        if component.unit_price is None:
            raise PricingError(f"{field}.unit_price", f"a {kind.value} component needs a price")
    if kind is ComponentKind.PER_UNIT:
        low = component.min_quantity if component.min_quantity is not None else 1
        if low < 1:
            raise PricingError(f"{field}.min_quantity", "must be at least 1")
        if component.max_quantity is not None and component.max_quantity < low:
            raise PricingError(f"{field}.max_quantity", "must not be below min_quantity")
        return dataclasses.replace(component, min_quantity=low, unit=component.unit or "unit")
    if component.min_quantity is not None or component.max_quantity is not None:
        raise PricingError(f"{field}.min_quantity", "only per_unit components have a quantity")
    if kind is ComponentKind.METERED:
        if component.metric is None or not METRIC.match(component.metric):
            raise PricingError(f"{field}.metric", "a metered component needs a metric like 'bandwidth.gb'")
        if component.pricing_model is None:
            raise PricingError(f"{field}.pricing_model", "choose per_unit, graduated or volume")
        if component.pricing_model is PricingModel.PER_UNIT:
            if component.unit_price is None:
                raise PricingError(f"{field}.unit_price", "a per-unit metered price needs a unit_price")
            if component.tiers:
                raise PricingError(f"{field}.tiers", "a per-unit metered price has no tiers")
        else:
            if component.unit_price is not None:
                raise PricingError(f"{field}.unit_price", "a tiered price takes its prices from the tiers")
            validate_tiers(component.tiers, f"{field}.tiers")
        if not component.unit:
            raise PricingError(f"{field}.unit", "name the unit customers are charged by (GB, hour)")
    return component


def validate_plan(plan: PlanSpec, field: str = "") -> PlanSpec:
    prefix = f"{field}." if field else ""
    if not PLAN_CODE.match(plan.code):
        raise PricingError(f"{prefix}code", "use lowercase letters, digits, '-' and '_' (up to 50)")
    if not plan.name.strip():
        raise PricingError(f"{prefix}name", "must not be empty")
    try:
        currency = check_currency(plan.currency)
    except CurrencyError as exc:
        raise PricingError(f"{prefix}currency", str(exc)) from None
    if not plan.components:
        raise PricingError(f"{prefix}components", "a plan needs at least one price component")
    components = tuple(
        validate_component(c, f"{prefix}components.{i}") for i, c in enumerate(plan.components)
    )
    setups = [i for i, c in enumerate(components) if c.kind is ComponentKind.SETUP]
    if len(setups) > 1:
        raise PricingError(f"{prefix}components.{setups[1]}.kind", "a plan has at most one setup fee")
    seen: dict[str, int] = {}
    for i, c in enumerate(components):
        if c.metric is not None:
            if c.metric in seen:
                raise PricingError(
                    f"{prefix}components.{i}.metric", f"{c.metric} is already priced in this plan"
                )
            seen[c.metric] = i
    return dataclasses.replace(plan, currency=currency, components=components)


def validate_plans(plans: Sequence[PlanSpec]) -> tuple[PlanSpec, ...]:
    checked = tuple(validate_plan(p, f"plans.{i}") for i, p in enumerate(plans))
    codes: set[str] = set()
    for i, plan in enumerate(checked):
        if plan.code in codes:
            raise PricingError(f"plans.{i}.code", f"{plan.code!r} is used by another plan")
        codes.add(plan.code)
    return checked


# -------------------------------------------------------------------- rating
def rate_tiers(model: PricingModel, tiers: Sequence[Tier], quantity: Decimal) -> Decimal:
    """The charge for ``quantity`` units under graduated or volume tiers (unrounded)."""
    if quantity <= 0:
        return ZERO
    if model is PricingModel.VOLUME:
        for tier in tiers:
            if tier.up_to is None or quantity <= tier.up_to:
                return quantity * tier.unit_price + tier.flat_fee
        raise PricingError("tiers", "the last tier must be open-ended")
    total = ZERO
    for tier in tiers:
        if quantity <= tier.start:
            break
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        total += (top - tier.start) * tier.unit_price + tier.flat_fee
    return total


def rate_component(component: ComponentSpec, quantity: Decimal) -> Decimal:
    """What ``quantity`` costs for one period of ``component`` (unrounded).

    For flat and setup fees the quantity is ignored; for per-unit it is the ordered
    quantity; for metered it is the period's usage, less the included quantity.
    """
    if component.kind in (ComponentKind.FLAT, ComponentKind.SETUP):
        return component.unit_price or ZERO
    if component.kind is ComponentKind.PER_UNIT:
        return (component.unit_price or ZERO) * quantity
    billable = max(ZERO, quantity - component.included_quantity)
    if component.pricing_model is PricingModel.PER_UNIT:
        return billable * (component.unit_price or ZERO)
    assert component.pricing_model is not None
    return rate_tiers(component.pricing_model, component.tiers, billable)


@dataclasses.dataclass(frozen=True)
class ComponentView:
    """A price component as shown and sold (the attributes of ``PriceComponent``): read
    from plain rows, or with a marketplace's prices."""

    id: uuid.UUID
    position: int
    kind: ComponentKind
    label: str
    unit_price: Decimal | None
    metric: str | None
    unit: str | None
    pricing_model: PricingModel | None
    included_quantity: Decimal
    tiers: list[dict[str, Any]] | None
    min_quantity: int | None
    max_quantity: int | None
    infrastructure: bool

    @classmethod
    def of(cls, component: Any, **changes: Any) -> ComponentView:
        """The view of a stored component or of a row with its columns, ``changes`` applied."""
        values = {f.name: getattr(component, f.name) for f in dataclasses.fields(cls)}
        return cls(**{**values, **changes})


@dataclasses.dataclass(frozen=True)
class PlanView:
    """A plan as shown and sold (the attributes of ``Plan``)."""

    id: uuid.UUID
    version_id: uuid.UUID
    code: str
    name: str
    description: str
    currency: str
    billing_period: BillingPeriod
    position: int
    vm_size: dict[str, int] | None
    data_disk_gib: int | None
    components: list[ComponentView]

    @classmethod
    def of(cls, plan: Any, components: list[ComponentView]) -> PlanView:
        values = {f.name: getattr(plan, f.name) for f in dataclasses.fields(cls) if f.name != "components"}
        return cls(**values, components=components)


def spec_of(component: PriceComponent | ComponentView) -> ComponentSpec:
    """The rating view of a stored price component (what orders and billing rate with)."""
    return ComponentSpec(
        kind=component.kind,
        label=component.label,
        unit_price=component.unit_price,
        metric=component.metric,
        unit=component.unit,
        pricing_model=component.pricing_model,
        included_quantity=component.included_quantity,
        tiers=tuple(
            Tier(
                start=Decimal(t["from"]),
                up_to=None if t["up_to"] is None else Decimal(t["up_to"]),
                unit_price=Decimal(t["unit_price"]),
                flat_fee=Decimal(t.get("flat_fee") or 0),
            )
            for t in component.tiers or ()
        ),
        min_quantity=component.min_quantity,
        max_quantity=component.max_quantity,
        infrastructure=component.infrastructure,
    )


def plan_spec_of(plan: Plan) -> PlanSpec:
    """A stored plan as a definition again (to change one plan and store the set back)."""
    return PlanSpec(
        code=plan.code,
        name=plan.name,
        description=plan.description,
        currency=plan.currency,
        billing_period=plan.billing_period,
        components=tuple(spec_of(c) for c in plan.components),
        vm_size=dict(plan.vm_size) if plan.vm_size else None,
        data_disk_gib=plan.data_disk_gib,
    )


def price_from(plans: Sequence[Any]) -> tuple[Decimal | None, str | None]:
    """The lowest recurring price a month among the plans: flat fees plus the minimum
    quantity of per-unit fees; yearly plans count a twelfth. Metered usage is not known
    in advance and counts 0. Plans in another currency than the first plan's are ignored.
    ``plans`` are stored plans or a marketplace's priced views of them (the same attributes)."""
    if not plans:
        return None, None
    currency = plans[0].currency
    best: Decimal | None = None
    for plan in plans:
        if plan.currency != currency:
            continue
        monthly = ZERO
        for c in plan.components:
            if c.kind is ComponentKind.FLAT:
                monthly += c.unit_price or 0
            elif c.kind is ComponentKind.PER_UNIT:
                monthly += (c.unit_price or 0) * (c.min_quantity or 1)
        if plan.billing_period is BillingPeriod.YEAR:
            monthly = monthly / 12
        monthly = monthly.quantize(Decimal(1).scaleb(-PRICE_SCALE))
        best = monthly if best is None else min(best, monthly)
    return best, currency
