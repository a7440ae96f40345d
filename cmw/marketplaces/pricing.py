"""A marketplace's prices, and who is owed what of each sale.

The vendor's price list applies in the marketplace that hosts the product (where the
vendor published it, the platform as a rule). Each marketplace below it sells at its
parent's price marked up by its own rule for the price component, the most specific
first:

1. the component's own: ``{"percent": "20"}``, ``{"amount": "1.50"}`` (added to each of
   its prices: the fee, the unit price, every tier's unit price), or an explicit price,
   ``{"unit_price": "12.00"}`` (``{"tiers": [...]}`` with the parent's tier bounds for a
   tiered price);
2. the plan's mark-up, then the product's (percent or amount, in the plan's currency);
3. the marketplace's default percentage;
4. none: the parent's price.

No price is ever below the parent's: mark-ups are not negative, an explicit price below
the parent's is refused when set (:func:`validate`), and if the parent's price rises above
it later the parent's price applies. An explicit price that no longer fits the component
(a new version made it tiered, or moved its tier bounds) gives way to the next rule.

Every amount a customer is billed is split up the tree (:meth:`PriceList.owed`): the
issuing marketplace owes its parent the parent's price for the same thing, the parent owes
its own parent, and the hosting marketplace owes the vendor its price less the hosting
marketplace's commission. So each level earns what it received less what it owes, and the
earnings of all levels and the vendor add up to the amount billed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from cmw.catalog.models import Plan, PriceComponent, Product
from cmw.catalog.pricing import ComponentSpec, ComponentView, PlanView, Tier, price_from, spec_of
from cmw.marketplaces.models import Marketplace, MarketplacePrice, PriceMarkup
from cmw.marketplaces.service import ancestors, subtree_ids
from cmw.money import PRICE_SCALE, format_amount, round_to_minor

ZERO = Decimal(0)
HUNDRED = Decimal(100)
#: the largest mark-up in percent (a typing mistake guard: 1000% is eleven times the price)
MAX_PERCENT = Decimal(1000)
_SCALE = Decimal(1).scaleb(-PRICE_SCALE)


class MarkupError(ValueError):
    """A mark-up that cannot be applied; ``field`` is the dotted path of the offending value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class Markup:
    """One rule: exactly one of its fields is set."""

    percent: Decimal | None = None
    amount: Decimal | None = None
    unit_price: Decimal | None = None
    tiers: tuple[Tier, ...] = ()

    @classmethod
    def of(cls, doc: dict[str, Any] | None) -> Markup | None:
        """The rule stored as ``doc`` (checked when it was stored)."""
        if not doc:
            return None
        if doc.get("percent") is not None:
            return cls(percent=Decimal(doc["percent"]))
        if doc.get("amount") is not None:
            return cls(amount=Decimal(doc["amount"]))
        if doc.get("unit_price") is not None:
            return cls(unit_price=Decimal(doc["unit_price"]))
        if doc.get("tiers"):
            return cls(tiers=tuple(_tier(t) for t in doc["tiers"]))
        return None


def _tier(doc: dict[str, Any]) -> Tier:
    return Tier(
        start=Decimal(doc["from"]),
        up_to=None if doc.get("up_to") is None else Decimal(doc["up_to"]),
        unit_price=Decimal(doc["unit_price"]),
        flat_fee=Decimal(doc.get("flat_fee") or 0),
    )


def _tidy(value: Decimal) -> Decimal:
    """A computed price at the catalog's precision, rounded up half a step (so a mark-up
    never rounds a price below what it marks up)."""
    return value.quantize(_SCALE, rounding=ROUND_HALF_UP)


def apply(markup: Markup | None, parent: ComponentSpec) -> ComponentSpec | None:
    """The component priced by ``markup`` over ``parent``; None where an explicit price
    does not fit the component (the next rule applies)."""
    if markup is None:
        return parent
    if markup.percent is not None:
        factor = 1 + markup.percent / HUNDRED
        return dataclasses.replace(
            parent,
            unit_price=None if parent.unit_price is None else _tidy(parent.unit_price * factor),
            tiers=tuple(
                dataclasses.replace(
                    t, unit_price=_tidy(t.unit_price * factor), flat_fee=_tidy(t.flat_fee * factor)
                )
                for t in parent.tiers
            ),
        )
    if markup.amount is not None:
        return dataclasses.replace(
            parent,
            unit_price=None if parent.unit_price is None else parent.unit_price + markup.amount,
            tiers=tuple(
                dataclasses.replace(t, unit_price=t.unit_price + markup.amount) for t in parent.tiers
            ),
        )
    if markup.unit_price is not None:
        if parent.unit_price is None:
            return None
        return dataclasses.replace(parent, unit_price=max(markup.unit_price, parent.unit_price))
    if not _same_bounds(markup.tiers, parent.tiers):
        return None
    return dataclasses.replace(
        parent,
        tiers=tuple(
            dataclasses.replace(
                p, unit_price=max(m.unit_price, p.unit_price), flat_fee=max(m.flat_fee, p.flat_fee)
            )
            for m, p in zip(markup.tiers, parent.tiers, strict=True)
        ),
    )


def _same_bounds(ours: Sequence[Tier], theirs: Sequence[Tier]) -> bool:
    return bool(theirs) and [(t.start, t.up_to) for t in ours] == [(t.start, t.up_to) for t in theirs]


@dataclasses.dataclass(frozen=True)
class Rules:
    """One marketplace's rules for one product."""

    default_percent: Decimal | None
    row: PriceMarkup | None

    def candidates(self, plan_code: str, index: int) -> list[Markup]:
        """The rules that may price component ``index`` of plan ``plan_code``, most specific first."""
        found: list[Markup | None] = []
        if self.row is not None:
            plan = (self.row.plans or {}).get(plan_code) or {}
            found.append(Markup.of((plan.get("components") or {}).get(str(index))))
            found.append(Markup.of(plan.get("markup")))
            found.append(Markup.of(self.row.markup))
        if self.default_percent is not None:
            found.append(Markup(percent=self.default_percent))
        return [m for m in found if m is not None]

    def price(self, plan_code: str, index: int, parent: ComponentSpec) -> ComponentSpec:
        for markup in self.candidates(plan_code, index):
            priced = apply(markup, parent)
            if priced is not None:
                return priced
        return parent


@dataclasses.dataclass
class PriceList:
    """What one product costs in one marketplace, and at each level above it.

    ``levels`` are the marketplaces from the selling one up to the hosting one (the one
    whose prices are the vendor's); ``rules`` hold, for each of them but the hosting one,
    its rules for the product.
    """

    levels: tuple[uuid.UUID, ...]
    rules: tuple[Rules, ...]
    vendor_id: uuid.UUID
    commission_percent: Decimal
    _specs: dict[tuple[uuid.UUID, int], tuple[ComponentSpec, ...]] = dataclasses.field(default_factory=dict)

    @property
    def marked_up(self) -> bool:
        """Whether any level's prices may differ from the vendor's."""
        return any(r.row is not None or r.default_percent is not None for r in self.rules)

    def at_levels(self, plan: Plan | PlanView, index: int) -> tuple[ComponentSpec, ...]:
        """Component ``index`` of ``plan`` as priced at each level, the selling marketplace first."""
        key = (plan.id, index)
        found = self._specs.get(key)
        if found is None:
            spec = spec_of(plan.components[index])
            priced = [spec]
            for rules in reversed(self.rules):  # from the hosting marketplace's child down
                spec = rules.price(plan.code, index, spec)
                priced.append(spec)
            found = self._specs[key] = tuple(reversed(priced))
        return found

    def spec(self, plan: Plan | PlanView, index: int) -> ComponentSpec:
        """Component ``index`` of ``plan`` as priced where it is sold."""
        return self.at_levels(plan, index)[0]

    def specs(self, plan: Plan | PlanView) -> list[ComponentSpec]:
        return [self.spec(plan, i) for i in range(len(plan.components))]

    def vendor_share(self, amount: Decimal, currency: str) -> Decimal:
        if not self.commission_percent:
            return amount
        return round_to_minor(amount * (HUNDRED - self.commission_percent) / HUNDRED, currency)

    def owed(self, amounts: Sequence[Decimal], currency: str) -> tuple[Decimal, ...]:
        """From the amounts billed at each level (the selling marketplace's first, rounded),
        what each party is owed by the one below it: each parent marketplace, then the vendor."""
        return (*amounts[1:], self.vendor_share(amounts[-1], currency))

    def owed_nothing(self) -> tuple[Decimal, ...]:
        """For what the selling marketplace gives away itself (its coupons' discounts)."""
        return (ZERO,) * len(self.levels)

    def split(self, owed: Sequence[Decimal]) -> list[dict[str, str]]:
        """``owed`` as recorded on an invoice line."""
        parties = [{"marketplace_id": str(m)} for m in self.levels[1:]] + [{"vendor_id": str(self.vendor_id)}]
        return [{**party, "amount": format_amount(a)} for party, a in zip(parties, owed, strict=True)]


class Sold(Protocol):
    """What :func:`price_list` reads of a product (a stored one, or a row of its columns)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def marketplace_id(self) -> uuid.UUID: ...
    @property
    def vendor_id(self) -> uuid.UUID: ...


def price_list(session: Session, marketplace: Marketplace, product: Sold) -> PriceList:
    """The product's prices in ``marketplace``: one query for the rules of the marketplaces
    between it and the one hosting the product, none where it hosts the product."""
    if marketplace.id == product.marketplace_id:
        return PriceList((marketplace.id,), (), product.vendor_id, marketplace.commission_percent)
    chain = ancestors(session, marketplace)
    ids = [m.id for m in chain]
    if product.marketplace_id not in ids:  # not sold here: the vendor's prices, nothing owed on the way
        home = session.get(Marketplace, product.marketplace_id)
        commission = home.commission_percent if home is not None else ZERO
        return PriceList((marketplace.id,), (), product.vendor_id, commission)
    chain = chain[: ids.index(product.marketplace_id) + 1]
    below = chain[:-1]
    rows = {
        row.marketplace_id: row
        for row in session.scalars(
            sa.select(PriceMarkup).where(
                PriceMarkup.product_id == product.id, PriceMarkup.marketplace_id.in_([m.id for m in below])
            )
        )
    }
    return PriceList(
        tuple(m.id for m in chain),
        tuple(Rules(m.default_markup_percent, rows.get(m.id)) for m in below),
        product.vendor_id,
        chain[-1].commission_percent,
    )


def price_list_of(session: Session, marketplace_id: uuid.UUID, product_id: uuid.UUID) -> PriceList:
    """:func:`price_list` by ids (a subscription's marketplace and product)."""
    marketplace = session.get(Marketplace, marketplace_id)
    product = session.get(Product, product_id)
    assert marketplace is not None and product is not None
    return price_list(session, marketplace, product)


# ---------------------------------------------------------------- validation
def _decimal(value: Any, field: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise MarkupError(field, "must be a number") from None
    if not number.is_finite():
        raise MarkupError(field, "must be a number")
    if number != number.quantize(_SCALE, rounding=ROUND_HALF_UP):
        raise MarkupError(field, f"at most {PRICE_SCALE} decimals")
    return number


def check_markup(doc: dict[str, Any] | None, field: str, *, explicit: bool = False) -> dict[str, Any] | None:
    """A product- or plan-wide rule (percent or amount), or for a component also an
    explicit price, in its stored form. Mark-ups below zero would sell below the parent."""
    if doc is None:
        return None
    allowed = ("percent", "amount", "unit_price", "tiers") if explicit else ("percent", "amount")
    given = [k for k in allowed if doc.get(k) is not None]
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        kinds = ", ".join(allowed)
        raise MarkupError(f"{field}.{unknown[0]}", f"not a kind of price here; use one of: {kinds}")
    if len(given) != 1:
        raise MarkupError(field, f"give exactly one of: {', '.join(allowed)}")
    kind = given[0]
    if kind == "tiers":
        tiers = doc["tiers"]
        if not isinstance(tiers, list) or not tiers:
            raise MarkupError(f"{field}.tiers", "a list of tiers with the parent's bounds")
        stored = []
        for i, t in enumerate(tiers):
            if not isinstance(t, dict) or "unit_price" not in t:
                raise MarkupError(f"{field}.tiers.{i}", "each tier needs from, up_to and unit_price")
            stored.append(
                {
                    "from": format_amount(_decimal(t.get("from", 0), f"{field}.tiers.{i}.from")),
                    "up_to": None
                    if t.get("up_to") is None
                    else format_amount(_decimal(t["up_to"], f"{field}.tiers.{i}.up_to")),
                    "unit_price": format_amount(_decimal(t["unit_price"], f"{field}.tiers.{i}.unit_price")),
                    "flat_fee": format_amount(
                        _decimal(t.get("flat_fee") or 0, f"{field}.tiers.{i}.flat_fee")
                    ),
                }
            )
        return {"tiers": stored}
    value = _decimal(doc[kind], f"{field}.{kind}")
    if value < 0:
        raise MarkupError(f"{field}.{kind}", "would sell below the parent's price: must not be negative")
    if kind == "percent" and value > MAX_PERCENT:
        raise MarkupError(f"{field}.percent", f"at most {MAX_PERCENT}%")
    return {kind: format_amount(value)}


def validate(
    parent_prices: PriceList, plans: Sequence[Plan], data: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The product's rules for ``marketplace`` from an API body, checked against the
    parent's current prices (``parent_prices``): the stored ``markup`` and ``plans``."""
    markup = check_markup(data.get("markup"), "markup")
    by_code = {p.code: p for p in plans}
    stored: dict[str, Any] = {}
    for code, doc in (data.get("plans") or {}).items():
        field = f"plans.{code}"
        plan = by_code.get(code)
        if plan is None:
            raise MarkupError(field, f"not a plan of this product; its plans: {', '.join(by_code)}")
        if not isinstance(doc, dict):
            raise MarkupError(field, "give markup and/or components")
        unknown = sorted(set(doc) - {"markup", "components"})
        if unknown:
            raise MarkupError(f"{field}.{unknown[0]}", "unknown field; give markup and/or components")
        components: dict[str, Any] = {}
        for key, rule in (doc.get("components") or {}).items():
            where = f"{field}.components.{key}"
            try:
                index = int(key)
            except ValueError:
                message = "components are named by their index in the plan (0, 1, ...)"
                raise MarkupError(where, message) from None
            if not 0 <= index < len(plan.components):
                count = len(plan.components)
                raise MarkupError(where, f"the plan has {count} price components (0 to {count - 1})")
            if rule is None:
                continue
            checked = check_markup(rule, where, explicit=True)
            assert checked is not None
            parent = parent_prices.spec(plan, index)
            _check_explicit(Markup.of(checked), parent, where, plan.currency)
            components[str(index)] = checked
        plan_markup = check_markup(doc.get("markup"), f"{field}.markup")
        if plan_markup is not None or components:
            stored[code] = {"markup": plan_markup, "components": components}
    return markup, stored


def _check_explicit(markup: Markup | None, parent: ComponentSpec, field: str, currency: str) -> None:
    if markup is None:
        return
    if markup.unit_price is not None:
        if parent.unit_price is None:
            raise MarkupError(f"{field}.unit_price", "this component is priced in tiers: give tiers")
        if markup.unit_price < parent.unit_price:
            raise MarkupError(
                f"{field}.unit_price",
                f"below the parent's price of {format_amount(parent.unit_price)} {currency}",
            )
    elif markup.tiers:
        if not parent.tiers:
            raise MarkupError(f"{field}.tiers", "this component has one price: give unit_price")
        if not _same_bounds(markup.tiers, parent.tiers):
            bounds = ", ".join(
                f"{format_amount(t.start)}-{'∞' if t.up_to is None else format_amount(t.up_to)}"
                for t in parent.tiers
            )
            raise MarkupError(f"{field}.tiers", f"use the parent's tier bounds: {bounds}")
        for i, (ours, theirs) in enumerate(zip(markup.tiers, parent.tiers, strict=True)):
            if ours.unit_price < theirs.unit_price or ours.flat_fee < theirs.flat_fee:
                raise MarkupError(
                    f"{field}.tiers.{i}",
                    f"below the parent's price of {format_amount(theirs.unit_price)} {currency} "
                    f"(flat fee {format_amount(theirs.flat_fee)})",
                )


def save(
    session: Session,
    marketplace: Marketplace,
    product: Product,
    markup: dict[str, Any] | None,
    plans: dict[str, Any],
    user_id: uuid.UUID | None,
    now: dt.datetime,
) -> None:
    """Store the product's rules for ``marketplace`` (none at all removes its row)."""
    row = session.get(PriceMarkup, (marketplace.id, product.id))
    if markup is None and not plans:
        if row is not None:
            session.delete(row)
        return
    if row is None:
        row = PriceMarkup(marketplace_id=marketplace.id, product_id=product.id)
        session.add(row)
    row.markup, row.plans, row.updated_at, row.updated_by_id = markup, plans, now, user_id


def component_view(spec: ComponentSpec) -> dict[str, Any]:
    """The prices of a priced component, as the API shows them."""
    return {
        "unit_price": None if spec.unit_price is None else format_amount(spec.unit_price),
        "tiers": [t.as_json() for t in spec.tiers] if spec.tiers else None,
    }


def priced_plans(prices: PriceList, plans: Sequence[Plan | PlanView]) -> Sequence[Plan | PlanView]:
    """``plans`` with this marketplace's prices; the plans themselves where its prices are
    the vendor's."""
    if not prices.marked_up:
        return plans
    views = []
    for plan in plans:
        components = []
        stored: Sequence[PriceComponent | ComponentView] = plan.components
        for index, c in enumerate(stored):
            spec = prices.spec(plan, index)
            components.append(
                ComponentView.of(
                    c,
                    unit_price=spec.unit_price,
                    tiers=[t.as_json() for t in spec.tiers] if c.tiers else c.tiers,
                )
            )
        views.append(PlanView.of(plan, components))
    return views


def _parent_prices(session: Session, marketplace: Marketplace, product: Product) -> PriceList:
    parent = session.get(Marketplace, marketplace.parent_id) if marketplace.parent_id else None
    if parent is None or product.marketplace_id == marketplace.id:
        raise MarkupError("product", "this marketplace publishes the product: its vendor sets the prices")
    return price_list(session, parent, product)


def live_plans(session: Session, product: Product) -> list[Plan]:
    if product.live_version_id is None:
        return []
    return list(
        session.scalars(
            sa.select(Plan)
            .options(selectinload(Plan.components))
            .where(Plan.version_id == product.live_version_id)
            .order_by(Plan.position)
        )
    )


def view(session: Session, marketplace: Marketplace, product: Product) -> dict[str, Any]:
    """The product's prices in ``marketplace`` beside its parent's, and the rules that make them."""
    parent = _parent_prices(session, marketplace, product)
    here = price_list(session, marketplace, product)
    row = session.get(PriceMarkup, (marketplace.id, product.id))
    rules = (row.plans if row is not None else None) or {}
    plans = []
    for plan in live_plans(session, product):
        plan_rules = rules.get(plan.code) or {}
        component_rules = plan_rules.get("components") or {}
        plans.append(
            {
                "code": plan.code,
                "name": plan.name,
                "currency": plan.currency,
                "billing_period": plan.billing_period.value,
                "markup": plan_rules.get("markup"),
                "components": [
                    {
                        "index": index,
                        "kind": c.kind.value,
                        "label": c.label,
                        "metric": c.metric,
                        "unit": c.unit,
                        "parent_price": component_view(parent.spec(plan, index)),
                        "price": component_view(here.spec(plan, index)),
                        "rule": component_rules.get(str(index)),
                    }
                    for index, c in enumerate(plan.components)
                ],
            }
        )
    return {
        "product_id": product.id,
        "slug": product.slug,
        "markup": row.markup if row is not None else None,
        "default_markup_percent": marketplace.default_markup_percent,
        "plans": plans,
    }


def set_prices(
    session: Session,
    marketplace: Marketplace,
    product: Product,
    data: dict[str, Any],
    user_id: uuid.UUID | None,
    now: dt.datetime,
) -> None:
    """Replace the product's rules in ``marketplace`` (checked against the parent's prices)."""
    parent = _parent_prices(session, marketplace, product)
    markup, plans = validate(parent, live_plans(session, product), data)
    save(session, marketplace, product, markup, plans, user_id, now)
    session.flush()
    refresh_prices_from(session, subtree_ids(session, marketplace.id), [product.id])


def set_pricing(session: Session, marketplace: Marketplace, data: dict[str, Any]) -> None:
    """The marketplace's default mark-up and the commission it keeps of its own products' prices."""
    if (
        "default_markup_percent" in data
        and data["default_markup_percent"] != marketplace.default_markup_percent
    ):
        value = data["default_markup_percent"]
        if value is not None:
            if marketplace.parent_id is None:
                raise MarkupError(
                    "default_markup_percent", "the platform has no parent to mark up: vendors set its prices"
                )
            try:
                checked = check_markup({"percent": value}, "default_markup_percent")
            except MarkupError as exc:
                raise MarkupError("default_markup_percent", exc.message) from None
            assert checked is not None
            value = Decimal(checked["percent"])
            if value != value.quantize(Decimal("0.0001")):
                raise MarkupError("default_markup_percent", "at most 4 decimals")
        marketplace.default_markup_percent = value
        session.flush()
        refresh_prices_from(session, subtree_ids(session, marketplace.id))
    if "commission_percent" in data:
        value = _decimal(data["commission_percent"], "commission_percent")
        if not ZERO <= value <= HUNDRED:
            raise MarkupError("commission_percent", "between 0 and 100")
        if value != value.quantize(Decimal("0.0001")):
            raise MarkupError("commission_percent", "at most 4 decimals")
        marketplace.commission_percent = value


def refresh_prices_from(
    session: Session, marketplace_ids: Sequence[uuid.UUID], product_ids: Sequence[uuid.UUID] | None = None
) -> None:
    """Recompute the "price from" (:class:`MarketplacePrice`) of the products (default: all
    published ones) in the marketplaces, after their mark-ups or the vendor's prices changed.
    A row is kept only where the marketplace's prices differ from the vendor's."""
    marketplaces = [m for m in (session.get(Marketplace, i) for i in marketplace_ids) if m is not None]
    marketplaces = [m for m in marketplaces if m.parent_id is not None]
    if not marketplaces:
        return
    stmt = sa.select(Product).where(Product.live_version_id.is_not(None))
    if product_ids is not None:
        stmt = stmt.where(Product.id.in_(list(product_ids)))
    products = list(session.scalars(stmt))
    plans: dict[uuid.UUID, list[Plan]] = {}
    for marketplace in marketplaces:
        for product in products:
            prices = price_list(session, marketplace, product)
            row = session.get(MarketplacePrice, (marketplace.id, product.id))
            if not prices.marked_up:
                if row is not None:
                    session.delete(row)
                continue
            if product.id not in plans:
                plans[product.id] = live_plans(session, product)
            amount, currency = price_from(priced_plans(prices, plans[product.id]))
            if row is None:
                row = MarketplacePrice(marketplace_id=marketplace.id, product_id=product.id)
                session.add(row)
            row.price_from_amount, row.price_from_currency = amount, currency
