"""Cost estimates before ordering: a plan (or several products' plans) with a quantity and
the expected usage per metric, over a number of months.

Rated with the catalog's one rating function, period by period as billing will: a monthly
plan is ``months`` periods, a yearly one ``ceil(months / 12)``; the expected usage is per
month, so a yearly period rates twelve months' usage at once (tiers apply per period).
Each line is rounded to the currency's minor unit; totals are sums of rounded lines.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from cmw.catalog.models import BillingPeriod, ComponentKind, Plan
from cmw.catalog.pricing import ComponentSpec, rate_component, spec_of
from cmw.money import format_amount, round_to_minor

ZERO = Decimal(0)


class EstimateError(ValueError):
    """The estimate cannot be made; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class Item:
    plan: Plan
    quantity: int = 1
    #: expected usage per month, by metric
    usage: Mapping[str, Decimal] = dataclasses.field(default_factory=dict)
    #: a name for the answer (the product's)
    label: str = ""
    #: the plan's components as the marketplace prices them (``PriceList.specs``); None:
    #: the vendor's prices
    specs: Sequence[ComponentSpec] | None = None


def _periods(plan: Plan, months: int) -> tuple[int, int]:
    """How many billing periods ``months`` spans, and the months in one period."""
    if plan.billing_period is BillingPeriod.YEAR:
        return math.ceil(months / 12), 12
    return months, 1


def estimate_item(item: Item, months: int) -> dict[str, Any]:
    plan, currency = item.plan, item.plan.currency
    periods, months_per_period = _periods(plan, months)
    metrics = {c.metric for c in plan.components if c.kind is ComponentKind.METERED}
    unknown = sorted(set(item.usage) - metrics)
    if unknown:
        raise EstimateError("usage", f"{plan.name} has no price for {', '.join(unknown)}")
    lines: list[dict[str, Any]] = []
    totals = {"setup": ZERO, "recurring": ZERO, "usage": ZERO}
    for index, component in enumerate(plan.components):
        spec = item.specs[index] if item.specs is not None else spec_of(component)
        line: dict[str, Any] = {"label": component.label, "kind": component.kind.value}
        if component.kind is ComponentKind.SETUP:
            amount = round_to_minor(rate_component(spec, Decimal(1)), currency)
            totals["setup"] += amount
            line.update(amount=amount, detail="once")
        elif component.kind in (ComponentKind.FLAT, ComponentKind.PER_UNIT):
            one = round_to_minor(rate_component(spec, Decimal(item.quantity)), currency)
            amount = one * periods
            totals["recurring"] += amount
            line.update(
                amount=amount,
                per_period=one,
                periods=periods,
                quantity=item.quantity if component.kind is ComponentKind.PER_UNIT else None,
            )
        else:
            assert component.metric is not None
            monthly = item.usage.get(component.metric, ZERO)
            if monthly < 0:
                raise EstimateError(f"usage.{component.metric}", "expected usage must not be negative")
            used = monthly * months_per_period
            one = round_to_minor(rate_component(spec, used), currency)
            amount = one * periods
            totals["usage"] += amount
            line.update(
                amount=amount,
                per_period=one,
                periods=periods,
                metric=component.metric,
                unit=component.unit,
                usage_per_month=monthly,
                included=component.included_quantity,
            )
        lines.append(line)
    total = totals["setup"] + totals["recurring"] + totals["usage"]
    covered = periods * months_per_period
    return {
        "label": item.label or plan.name,
        "plan": plan.code,
        "plan_name": plan.name,
        "billing_period": plan.billing_period.value,
        "quantity": item.quantity,
        "lines": lines,
        "setup_total": totals["setup"],
        "recurring_total": totals["recurring"],
        "usage_total": totals["usage"],
        "total": total,
        # a month once set up: yearly fees spread over their twelve months
        "monthly": round_to_minor((totals["recurring"] + totals["usage"]) / covered, currency),
    }


def estimate(items: Sequence[Item], months: int) -> dict[str, Any]:
    """The estimated cost of ``items`` over ``months`` months, with its breakdown."""
    if not items:
        raise EstimateError("items", "name at least one plan")
    if not 1 <= months <= 120:
        raise EstimateError("months", "estimate 1 to 120 months")
    currencies = {i.plan.currency for i in items}
    if len(currencies) > 1:
        raise EstimateError(
            "items", f"the plans are in different currencies ({', '.join(sorted(currencies))})"
        )
    (currency,) = currencies
    parts = [estimate_item(i, months) for i in items]
    return {
        "currency": currency,
        "months": months,
        "items": parts,
        "setup_total": sum((p["setup_total"] for p in parts), ZERO),
        "total": sum((p["total"] for p in parts), ZERO),
        "monthly": sum((p["monthly"] for p in parts), ZERO),
    }


def as_json(result: dict[str, Any]) -> dict[str, Any]:
    """Decimals as strings, for the API."""

    def convert(value: Any) -> Any:
        if isinstance(value, Decimal):
            return format_amount(value)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    converted: dict[str, Any] = convert(result)
    return converted
