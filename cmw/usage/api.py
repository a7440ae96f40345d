"""Cost estimates before ordering (no sign-in needed: prices are public)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from cmw.accounts.auth import current_marketplace
from cmw.api.errors import ApiError
from cmw.catalog import service as catalog
from cmw.catalog.models import Plan, Product
from cmw.catalog.schemas import Amount
from cmw.extensions import current_session
from cmw.usage import estimates

blp = Blueprint("usage", __name__, url_prefix="/api/v1", description="Usage and cost")


class EstimateItemSchema(Schema):
    product = fields.String(
        required=True, validate=validate.Length(min=1, max=80), metadata={"description": "slug or id"}
    )
    plan = fields.String(
        required=True, validate=validate.Length(min=1, max=50), metadata={"description": "plan code"}
    )
    quantity = fields.Integer(load_default=1, validate=validate.Range(min=1, max=100_000))
    usage = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=100)),
        values=Amount(),
        load_default=dict,
        metadata={"description": 'expected usage per month by metric, e.g. {"bandwidth.gb": "250"}'},
    )


class EstimateRequestSchema(Schema):
    items = fields.List(
        fields.Nested(EstimateItemSchema), required=True, validate=validate.Length(min=1, max=20)
    )
    months = fields.Integer(load_default=1, validate=validate.Range(min=1, max=120))


class EstimateLineSchema(Schema):
    label = fields.String()
    kind = fields.String()
    amount = fields.String(metadata={"description": "over the whole estimate"})
    per_period = fields.String()
    periods = fields.Integer()
    quantity = fields.Integer(allow_none=True)
    metric = fields.String()
    unit = fields.String(allow_none=True)
    usage_per_month = fields.String()
    included = fields.String()


class EstimateItemOutSchema(Schema):
    label = fields.String()
    plan = fields.String()
    plan_name = fields.String()
    billing_period = fields.String()
    quantity = fields.Integer()
    lines = fields.List(fields.Nested(EstimateLineSchema))
    setup_total = fields.String()
    recurring_total = fields.String()
    usage_total = fields.String()
    total = fields.String()
    monthly = fields.String()


class EstimateSchema(Schema):
    currency = fields.String()
    months = fields.Integer()
    items = fields.List(fields.Nested(EstimateItemOutSchema))
    setup_total = fields.String()
    total = fields.String(metadata={"description": "setup, fees and usage over the months"})
    monthly = fields.String(metadata={"description": "a month once set up, yearly fees spread over 12"})


def items_for(refs: list[dict[str, Any]]) -> list[estimates.Item]:
    """The published plans named by ``refs`` (product and plan code), as estimate items."""
    session, marketplace = current_session(), current_marketplace()
    found: list[estimates.Item] = []
    for index, ref in enumerate(refs):
        product: Product | None = catalog.find_published(session, marketplace, ref["product"])
        if product is None:
            raise estimates.EstimateError(
                f"items.{index}.product", f"{ref['product']!r} is not in this catalog"
            )
        live = product.live_version
        assert live is not None
        plan: Plan | None = next((p for p in live.plans if p.code == ref["plan"]), None)
        if plan is None:
            codes = ", ".join(p.code for p in live.plans)
            raise estimates.EstimateError(f"items.{index}.plan", f"{live.name} sells {codes}")
        found.append(estimates.Item(plan, ref.get("quantity", 1), ref.get("usage") or {}, live.name))
    return found


@blp.route("/cost-estimates")
class CostEstimates(MethodView):
    @blp.arguments(EstimateRequestSchema)
    @blp.response(200, EstimateSchema)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """What plans would cost over ``months``, with the expected usage per month: setup,
        recurring fees and usage, rated as billing rates them. Nothing is stored."""
        try:
            result = estimates.estimate(items_for(data["items"]), data["months"])
        except estimates.EstimateError as exc:
            raise ApiError(
                422,
                f"invalid input: {exc.field}",
                errors=[{"location": "json", "field": exc.field, "message": exc.message}],
            ) from None
        return estimates.as_json(result)
