"""Bodies of the marketplaces API."""

from __future__ import annotations

from marshmallow import Schema, fields

from cmw.marketplaces.models import MarketplaceKind


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
