"""Invoices through the REST API: customers see their organisations' invoices, admins all
of the marketplace's. (Vendors see their revenue, not customers' invoices, which carry
other vendors' lines.)"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from cmw.accounts.auth import Identity, require_identity, roles_required, visible_rows
from cmw.accounts.models import Role
from cmw.api.errors import ApiError
from cmw.api.pagination import PageArgs, page_of, paginate
from cmw.billing.models import Invoice, InvoiceStatus, LineKind
from cmw.catalog.schemas import Amount
from cmw.extensions import current_session

blp = Blueprint("billing", __name__, url_prefix="/api/v1", description="Invoices")


class InvoiceListArgs(Schema):
    status = fields.Enum(InvoiceStatus, by_value=True, load_default=None)
    customer_id = fields.UUID(load_default=None)
    issued_from = fields.AwareDateTime(load_default=None, metadata={"description": "issued at or after"})
    issued_to = fields.AwareDateTime(load_default=None, metadata={"description": "issued before"})


class InvoiceLineSchema(Schema):
    id = fields.UUID()
    position = fields.Integer()
    kind = fields.Enum(LineKind, by_value=True)
    description = fields.String()
    subscription_id = fields.UUID(allow_none=True)
    product_id = fields.UUID(allow_none=True)
    plan_id = fields.UUID(allow_none=True)
    period_start = fields.AwareDateTime(allow_none=True)
    period_end = fields.AwareDateTime(allow_none=True)
    quantity = Amount()
    unit = fields.String(allow_none=True)
    unit_price = Amount(allow_none=True)
    amount = Amount()


class InvoiceSchema(Schema):
    id = fields.UUID()
    number = fields.String(allow_none=True, metadata={"description": "null while a draft"})
    status = fields.Enum(InvoiceStatus, by_value=True)
    marketplace_id = fields.UUID()
    customer_id = fields.UUID()
    currency = fields.String()
    issued_at = fields.AwareDateTime(allow_none=True)
    due_at = fields.AwareDateTime(allow_none=True)
    subtotal = Amount()
    tax_total = Amount()
    total = Amount(metadata={"description": "the sum of the rounded lines, plus tax"})
    buyer = fields.Dict(metadata={"description": "the buyer as billed, frozen at issue"})


class InvoiceDetailSchema(InvoiceSchema):
    lines = fields.List(fields.Nested(InvoiceLineSchema))


def visible(identity: Identity) -> sa.ColumnElement[bool]:
    return visible_rows(identity, Invoice.marketplace_id, Invoice.customer_id, lambda _vendors: sa.false())


@blp.route("/invoices")
class Invoices(MethodView):
    @blp.arguments(InvoiceListArgs, location="query")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(InvoiceSchema))
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def get(self, filters: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """Invoices you may see, newest first: your organisations' (customers), all (admins)."""
        stmt = sa.select(Invoice).where(visible(require_identity()))
        if filters["status"]:
            stmt = stmt.where(Invoice.status == filters["status"])
        if filters["customer_id"]:
            stmt = stmt.where(Invoice.customer_id == filters["customer_id"])
        if filters["issued_from"]:
            stmt = stmt.where(Invoice.issued_at >= filters["issued_from"])
        if filters["issued_to"]:
            stmt = stmt.where(Invoice.issued_at < filters["issued_to"])
        ordered = stmt.order_by(Invoice.created_at.desc(), Invoice.id)
        return paginate(current_session(), ordered, args["page"], args["per_page"])


@blp.route("/invoices/<uuid:invoice_id>")
class InvoiceResource(MethodView):
    @blp.response(200, InvoiceDetailSchema)
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def get(self, invoice_id: uuid.UUID) -> Invoice:
        """One invoice with its lines."""
        found = current_session().scalar(
            sa.select(Invoice).where(Invoice.id == invoice_id, visible(require_identity()))
        )
        if found is None:
            raise ApiError(404, "no such invoice")
        return found
