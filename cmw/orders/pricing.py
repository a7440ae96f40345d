"""An order's price breakdown: what is due now, what each period costs, what is billed
on usage. Amounts come from the catalog's one rating function and are rounded half-up
to the currency's minor unit per line; totals are sums of rounded lines."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from cmw.catalog.models import ComponentKind, Plan, PriceComponent
from cmw.catalog.pricing import ComponentSpec, rate_component, spec_of
from cmw.money import format_amount, round_to_minor


class QuantityError(ValueError):
    pass


def check_quantity(plan: Plan, quantity: int) -> None:
    per_unit = [c for c in plan.components if c.kind is ComponentKind.PER_UNIT]
    if not per_unit:
        if quantity != 1:
            raise QuantityError("this plan has no per-unit price: order a quantity of 1")
        return
    for c in per_unit:
        low, high = c.min_quantity or 1, c.max_quantity
        if quantity < low or (high is not None and quantity > high):
            allowed = f"{low} to {high}" if high is not None else f"at least {low}"
            raise QuantityError(f"{c.label}: order {allowed} {c.unit or 'units'}")


def charged(plan: Plan, licence_only: bool = False) -> list[tuple[int, PriceComponent]]:
    """The plan's components (with their index) a subscription pays for: all of them, or,
    when it runs in the customer's own cloud (``licence_only``), all but the infrastructure."""
    return [(i, c) for i, c in enumerate(plan.components) if not (licence_only and c.infrastructure)]


def breakdown(
    plan: Plan,
    quantity: int,
    *,
    trial_days: int = 0,
    specs: Sequence[ComponentSpec] | None = None,
    licence_only: bool = False,
) -> dict[str, Any]:
    """The order's prices: the plan's components as priced by ``specs`` (the marketplace's
    prices, ``cmw.marketplaces.pricing``), else as the vendor priced them; without the
    infrastructure ones when the customer's own cloud runs it (``licence_only``)."""
    currency = plan.currency
    lines: list[dict[str, Any]] = []
    setup_total = period_total = Decimal(0)
    for index, component in charged(plan, licence_only):
        spec = specs[index] if specs is not None else spec_of(component)
        line: dict[str, Any] = {"kind": component.kind.value, "label": component.label}
        if component.kind is ComponentKind.SETUP:
            amount = round_to_minor(rate_component(spec, Decimal(1)), currency)
            setup_total += amount
            line.update(amount=format_amount(amount), when="once")
        elif component.kind is ComponentKind.FLAT:
            amount = round_to_minor(rate_component(spec, Decimal(1)), currency)
            period_total += amount
            line.update(amount=format_amount(amount), when="each period")
        elif component.kind is ComponentKind.PER_UNIT:
            amount = round_to_minor(rate_component(spec, Decimal(quantity)), currency)
            period_total += amount
            line.update(
                quantity=quantity,
                unit=component.unit,
                unit_price=format_amount(spec.unit_price or Decimal(0)),
                amount=format_amount(amount),
                when="each period",
            )
        else:
            line.update(
                metric=component.metric,
                unit=component.unit,
                pricing_model=component.pricing_model.value if component.pricing_model else None,
                included_quantity=format_amount(component.included_quantity),
                unit_price=None if spec.unit_price is None else format_amount(spec.unit_price),
                tiers=[t.as_json() for t in spec.tiers] if component.tiers else component.tiers,
                amount=None,
                when="on usage",
            )
        lines.append(line)
    due_now = Decimal(0) if trial_days else setup_total + period_total
    return {
        "currency": currency,
        "billing_period": plan.billing_period.value,
        "lines": lines,
        "setup_total": format_amount(setup_total),
        "period_total": format_amount(period_total),
        "due_now": format_amount(due_now),
        "trial_days": trial_days,
    }
