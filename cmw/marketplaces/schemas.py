"""Bodies of the marketplaces API."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from marshmallow import Schema, fields, validate

from cmw.assets.api import storage
from cmw.assets.service import image_view
from cmw.marketplaces.models import Marketplace, MarketplaceKind
from cmw.money import format_amount


class MarketplaceSchema(Schema):
    id = fields.UUID(dump_only=True)
    kind = fields.Enum(MarketplaceKind, by_value=True)
    parent_id = fields.UUID(allow_none=True)
    name = fields.String()
    slug = fields.String()
    domain = fields.String(allow_none=True)
    description = fields.String()
    primary_colour = fields.String()
    accent_colour = fields.String()
    support_email = fields.String(allow_none=True)
    legal_footer = fields.String()
    email_sender_name = fields.String(allow_none=True)
    logo = fields.Method(
        "logo_view",
        dump_only=True,
        allow_none=True,
        metadata={"description": "the logo's renditions and the background colour it reads well on"},
    )

    def logo_view(self, marketplace: Marketplace) -> dict[str, Any] | None:
        return image_view(storage(), marketplace.logo)


class BrandingSchema(Schema):
    """What a marketplace's admins change about how it looks and whom it names."""

    name = fields.String(validate=validate.Length(min=1, max=120))
    domain = fields.String(
        allow_none=True,
        validate=validate.Length(max=253),
        metadata={
            "description": "the host name customers reach it by; unique",
            "example": "shop.example.com",
        },
    )
    description = fields.String(validate=validate.Length(max=5000))
    primary_colour = fields.String(
        metadata={"description": "#rrggbb; white text on it needs a contrast of 4.5:1", "example": "#1f4e79"}
    )
    accent_colour = fields.String(
        metadata={"description": "#rrggbb; black text on it needs a contrast of 4.5:1", "example": "#e07a1f"}
    )
    support_email = fields.Email(allow_none=True)
    legal_footer = fields.String(validate=validate.Length(max=5000))
    email_sender_name = fields.String(allow_none=True, validate=validate.Length(max=120))


class MarketplaceCreateSchema(BrandingSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=120))
    slug = fields.String(
        required=True,
        validate=validate.Length(min=1, max=63),
        metadata={"description": "its short name, in the development path prefix /m/<slug>"},
    )
    admins = fields.List(
        fields.Email(),
        load_default=list,
        metadata={"description": "e-mail addresses of existing users to make its admins"},
    )


class SelectionSchema(Schema):
    sells_all_of_parent = fields.Boolean(
        required=True,
        metadata={"description": "sell everything the parent sells, its new products included"},
    )
    product_ids = fields.List(
        fields.UUID(),
        load_default=list,
        metadata={"description": "the parent's products sold here (when not all of them)"},
    )


class OfferedProductSchema(Schema):
    id = fields.UUID()
    slug = fields.String()
    name = fields.String()
    selected = fields.Boolean(metadata={"description": "sold here"})


class SelectionViewSchema(SelectionSchema):
    parent_catalog = fields.List(
        fields.Nested(OfferedProductSchema), metadata={"description": "what the parent sells, to choose from"}
    )


class Percent(fields.Decimal):
    """A decimal in, its canonical text out ("20", "12.5"); documented as such (a number or
    a decimal string in, a decimal string out)."""

    def __init__(self, **kwargs: Any) -> None:
        metadata = {"type": "string", "format": "decimal", **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else format_amount(Decimal(value))


class PricingSchema(Schema):
    """A marketplace's pricing settings."""

    default_markup_percent = Percent(
        allow_none=True,
        metadata={
            "description": "mark-up in percent over the parent's prices of every product sold here "
            "that has no mark-up of its own; null: the parent's prices (child marketplaces)",
            "example": "15",
        },
    )
    commission_percent = Percent(
        metadata={
            "description": "of the vendors' prices of the products published in this marketplace, "
            "the part it keeps (the rest is owed to the vendor)",
            "example": "20",
        },
    )


RULE_DESCRIPTION = (
    '{"percent": "20"} or {"amount": "1.50"} (added to each of its prices); for a component also an '
    'explicit price, {"unit_price": "12.00"} or {"tiers": [...]} with the parent\'s tier bounds. '
    "Never below the parent's price."
)


class PlanRulesSchema(Schema):
    markup = fields.Dict(allow_none=True, metadata={"description": RULE_DESCRIPTION})
    components = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(allow_none=True),
        load_default=dict,
        metadata={"description": "per component, by its index in the plan: " + RULE_DESCRIPTION},
    )


class PricesSchema(Schema):
    """How this marketplace prices one product over its parent's prices."""

    markup = fields.Dict(
        allow_none=True,
        load_default=None,
        metadata={"description": "for the whole product: " + RULE_DESCRIPTION},
    )
    plans = fields.Dict(keys=fields.String(), values=fields.Nested(PlanRulesSchema), load_default=dict)


class PriceViewSchema(Schema):
    unit_price = fields.String(allow_none=True)
    tiers = fields.List(fields.Dict(), allow_none=True)


class PricedComponentSchema(Schema):
    index = fields.Integer()
    kind = fields.String()
    label = fields.String()
    metric = fields.String(allow_none=True)
    unit = fields.String(allow_none=True)
    parent_price = fields.Nested(PriceViewSchema, metadata={"description": "the parent marketplace's price"})
    price = fields.Nested(PriceViewSchema, metadata={"description": "this marketplace's price"})
    rule = fields.Dict(allow_none=True)


class PricedPlanSchema(Schema):
    code = fields.String()
    name = fields.String()
    currency = fields.String()
    billing_period = fields.String()
    markup = fields.Dict(allow_none=True)
    components = fields.List(fields.Nested(PricedComponentSchema))


class PricesViewSchema(Schema):
    product_id = fields.UUID()
    slug = fields.String()
    markup = fields.Dict(allow_none=True)
    default_markup_percent = Percent(allow_none=True)
    plans = fields.List(fields.Nested(PricedPlanSchema))
