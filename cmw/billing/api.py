"""Invoices, billing settings and tax rates through the REST API. Customers see their
organisations' invoices, admins all of the marketplace's. (Vendors see their revenue,
not customers' invoices, which carry other vendors' lines.)"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from cmw.accounts.auth import Identity, current_marketplace, require_identity, roles_required, visible_rows
from cmw.accounts.models import Role
from cmw.api.errors import ApiError, invalid
from cmw.api.pagination import PageArgs, page_of, paginate
from cmw.api.views import attributes
from cmw.assets.api import storage
from cmw.billing import coupons, documents, payments, revenue, taxes
from cmw.billing.errors import BillingError
from cmw.billing.models import (
    Coupon,
    CouponDuration,
    CouponKind,
    CouponRedemption,
    CreditNote,
    Invoice,
    InvoiceStatus,
    LineKind,
    Payment,
    PaymentMethod,
    TaxRate,
)
from cmw.catalog.schemas import Amount
from cmw.extensions import current_session
from cmw.orders.models import Subscription

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
    seller = fields.Dict(metadata={"description": "the seller (the marketplace), frozen at issue"})
    tax_rate = Amount(metadata={"description": "percent"})
    tax_rule = fields.String(metadata={"description": "the tax rule applied, as printed"})


class PaymentSchema(Schema):
    id = fields.UUID(dump_only=True)
    amount = Amount(required=True)
    currency = fields.String(dump_only=True)
    method = fields.Enum(PaymentMethod, by_value=True, load_default=PaymentMethod.BANK_TRANSFER)
    reference = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=120),
        metadata={"description": "the bank's reference: a payment is recorded once per reference"},
    )  # fmt: skip
    received_at = fields.AwareDateTime(load_default=None, allow_none=True)


class CreditNoteSchema(Schema):
    id = fields.UUID(dump_only=True)
    invoice_id = fields.UUID(dump_only=True)
    number = fields.String(dump_only=True)
    issued_at = fields.AwareDateTime(dump_only=True)
    currency = fields.String(dump_only=True)
    reason = fields.String(required=True, validate=validate.Length(min=1, max=2000))
    subtotal = Amount(required=True, data_key="amount", metadata={"description": "credited before tax"})
    tax_total = Amount(dump_only=True)
    total = Amount(dump_only=True)
    subscription_id = fields.UUID(dump_only=True, allow_none=True)


class InvoiceDetailSchema(InvoiceSchema):
    lines = fields.List(fields.Nested(InvoiceLineSchema))
    payments = fields.List(fields.Nested(PaymentSchema))
    credit_notes = fields.List(fields.Nested(CreditNoteSchema))
    outstanding = Amount(metadata={"description": "what is still owed"})


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
    def get(self, invoice_id: uuid.UUID) -> dict[str, Any]:
        """One invoice with its lines, payments, credit notes and what it still owes."""
        found = current_session().scalar(
            sa.select(Invoice).where(Invoice.id == invoice_id, visible(require_identity()))
        )
        if found is None:
            raise ApiError(404, "no such invoice")
        return _detail(found)


def _detail(invoice: Invoice) -> dict[str, Any]:
    session = current_session()
    return {
        **attributes(invoice, InvoiceSchema),
        "lines": invoice.lines,
        "payments": list(
            session.scalars(
                sa.select(Payment).where(Payment.invoice_id == invoice.id).order_by(Payment.received_at)
            )
        ),
        "credit_notes": list(
            session.scalars(
                sa.select(CreditNote).where(CreditNote.invoice_id == invoice.id).order_by(CreditNote.sequence)
            )
        ),
        "outstanding": payments.outstanding(session, invoice)
        if invoice.status is not InvoiceStatus.DRAFT
        else invoice.total,
    }


def _admin_invoice(invoice_id: uuid.UUID) -> Invoice:
    found = current_session().get(Invoice, invoice_id)
    if found is None or found.marketplace_id != require_identity().marketplace.id:
        raise ApiError(404, "no such invoice")
    return found


class InvoiceUpdateSchema(Schema):
    buyer = fields.Dict(metadata={"description": "the buyer details printed (drafts only)"})


@blp.route("/admin/invoices/<uuid:invoice_id>")
class AdminInvoice(MethodView):
    @blp.arguments(InvoiceUpdateSchema)
    @blp.response(200, InvoiceDetailSchema)
    @roles_required(Role.ADMIN)
    def patch(self, data: dict[str, Any], invoice_id: uuid.UUID) -> dict[str, Any]:
        """Change a draft invoice. An issued invoice never changes: credit it instead."""
        invoice = _admin_invoice(invoice_id)
        if invoice.status is not InvoiceStatus.DRAFT:
            raise ApiError(
                422,
                f"invoice {invoice.number} is {invoice.status.value}: an issued invoice cannot change;"
                " issue a credit note to correct it",
                errors=[{"location": "path", "field": "invoice_id", "message": "issued invoices are final"}],
            )
        if "buyer" in data:
            invoice.buyer = data["buyer"]
        current_session().commit()
        return _detail(invoice)


@blp.route("/admin/invoices/<uuid:invoice_id>/payments")
class InvoicePayments(MethodView):
    @blp.arguments(PaymentSchema)
    @blp.response(201, PaymentSchema)
    @roles_required(Role.ADMIN)
    def post(self, data: dict[str, Any], invoice_id: uuid.UUID) -> Payment:
        """Record money received for the invoice (never more than it still owes)."""
        invoice = _admin_invoice(invoice_id)
        try:
            payment = payments.record_payment(
                current_session(),
                invoice,
                data["amount"],
                method=data["method"],
                reference=data["reference"],
                actor_id=require_identity().user.id,
                at=data["received_at"],
            )
        except BillingError as exc:
            raise _refused(exc) from None
        current_session().commit()
        return payment


@blp.route("/admin/invoices/<uuid:invoice_id>/credit-notes")
class InvoiceCreditNotes(MethodView):
    @blp.arguments(CreditNoteSchema)
    @blp.response(201, CreditNoteSchema)
    @roles_required(Role.ADMIN)
    def post(self, data: dict[str, Any], invoice_id: uuid.UUID) -> CreditNote:
        """Credit (part of) an issued invoice: never more than is left to credit."""
        invoice = _admin_invoice(invoice_id)
        try:
            note = payments.issue_credit_note(current_session(), invoice, data["subtotal"], data["reason"])
        except BillingError as exc:
            raise _refused(exc) from None
        current_session().commit()
        return note


@blp.route("/credit-notes")
class CreditNotes(MethodView):
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(CreditNoteSchema))
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Credit notes you may see, newest first."""
        stmt = sa.select(CreditNote).where(
            visible_rows(
                require_identity(), CreditNote.marketplace_id, CreditNote.customer_id, lambda _v: sa.false()
            )
        )
        return paginate(
            current_session(),
            stmt.order_by(CreditNote.issued_at.desc(), CreditNote.id),
            args["page"],
            args["per_page"],
        )


#: the e-invoice's media type (RFC 7303)
XML = "application/xml"


def download(data: bytes, mimetype: str, filename: str) -> Response:
    """A document as a download named after its number."""
    response = Response(data, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "private, max-age=300"
    return response


def pdf_response(invoice: Invoice) -> Response:
    return download(
        documents.pdf_of(current_session(), storage(), invoice), "application/pdf", f"{invoice.number}.pdf"
    )


def ubl_response(invoice: Invoice) -> Response:
    return download(documents.ubl_of(current_session(), invoice), XML, f"{invoice.number}.xml")


def credit_note_response(note: CreditNote, kind: str) -> Response:
    if kind == "pdf":
        data = documents.credit_note_pdf_of(current_session(), storage(), note)
        return download(data, "application/pdf", f"{note.number}.pdf")
    return download(documents.credit_note_ubl_of(current_session(), note), XML, f"{note.number}.xml")


def issued_invoice(invoice_id: uuid.UUID) -> Invoice:
    """An issued (or paid, or void) invoice the caller may see, or 404."""
    found = current_session().scalar(
        sa.select(Invoice).where(
            Invoice.id == invoice_id, Invoice.status != InvoiceStatus.DRAFT, visible(require_identity())
        )
    )
    if found is None:
        raise ApiError(404, "no such invoice")
    return found


def visible_credit_note(note_id: uuid.UUID) -> CreditNote:
    found = current_session().scalar(
        sa.select(CreditNote).where(
            CreditNote.id == note_id,
            visible_rows(
                require_identity(), CreditNote.marketplace_id, CreditNote.customer_id, lambda _v: sa.false()
            ),
        )
    )
    if found is None:
        raise ApiError(404, "no such credit note")
    return found


@blp.route("/invoices/<uuid:invoice_id>/pdf")
class InvoicePdf(MethodView):
    @blp.response(200, content_type="application/pdf", description="the invoice as PDF")
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def get(self, invoice_id: uuid.UUID) -> Response:
        """The issued invoice as a PDF."""
        return pdf_response(issued_invoice(invoice_id))


@blp.route("/invoices/<uuid:invoice_id>/ubl")
class InvoiceUbl(MethodView):
    @blp.response(200, content_type=XML, description="the invoice as a UBL 2.1 Invoice (EN 16931)")
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def get(self, invoice_id: uuid.UUID) -> Response:
        """The issued invoice as a structured e-invoice: UBL 2.1, EN 16931 core."""
        return ubl_response(issued_invoice(invoice_id))


@blp.route("/credit-notes/<uuid:note_id>/pdf")
class CreditNotePdf(MethodView):
    @blp.response(200, content_type="application/pdf", description="the credit note as PDF")
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def get(self, note_id: uuid.UUID) -> Response:
        """The credit note as a PDF."""
        return credit_note_response(visible_credit_note(note_id), "pdf")


@blp.route("/credit-notes/<uuid:note_id>/ubl")
class CreditNoteUbl(MethodView):
    @blp.response(200, content_type=XML, description="the credit note as a UBL 2.1 CreditNote (EN 16931)")
    @roles_required(Role.CUSTOMER, Role.ADMIN)
    def get(self, note_id: uuid.UUID) -> Response:
        """The credit note as a structured e-invoice: UBL 2.1, EN 16931 core."""
        return credit_note_response(visible_credit_note(note_id), "ubl")


class RevenueArgs(Schema):
    months = fields.Integer(load_default=12, validate=validate.Range(min=1, max=60))


class RevenueSchema(Schema):
    month = fields.String(metadata={"example": "2026-11"})
    currency = fields.String()
    invoiced = Amount(metadata={"description": "your products' invoice lines, before tax"})
    paid = Amount()
    earned = Amount(
        metadata={"description": "your part of them: the marketplace's price less its commission"}
    )


class MarketplaceRevenueSchema(Schema):
    month = fields.String(metadata={"example": "2026-11"})
    currency = fields.String()
    sold = Amount(metadata={"description": "invoiced to this marketplace's customers, before tax"})
    tax = Amount(metadata={"description": "tax on those invoices, this marketplace's to remit"})
    received = Amount(metadata={"description": "owed to it by the marketplaces under it for their sales"})
    owes = Amount(
        metadata={"description": "owed to its parent marketplace (or, for its own products, their vendors)"}
    )
    earned = Amount(metadata={"description": "sold + received - owes"})


@blp.route("/marketplace/revenue")
class MarketplaceRevenue(MethodView):
    @blp.arguments(RevenueArgs, location="query")
    @blp.response(200, MarketplaceRevenueSchema(many=True))
    @roles_required(Role.ADMIN)
    def get(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """This marketplace's revenue by month and currency, oldest first: what it sold to
        its customers, what the marketplaces under it owe it, what it owes up the tree, and
        what it earned."""
        return revenue.marketplace_revenue(current_session(), current_marketplace().id, args["months"])


@blp.route("/vendor/revenue")
class VendorRevenue(MethodView):
    @blp.arguments(RevenueArgs, location="query")
    @blp.response(200, RevenueSchema(many=True))
    @roles_required(Role.VENDOR)
    def get(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """What your products were invoiced for, by month and currency, oldest first."""
        identity = require_identity()
        return revenue.vendor_revenue(
            current_session(),
            identity.marketplace.id,
            identity.organisations_with(Role.VENDOR),
            args["months"],
        )


# ------------------------------------------------------------------ administration
class BillingSettingsSchema(Schema):
    seller_legal_name = fields.String(validate=validate.Length(max=200))
    seller_country = fields.String(allow_none=True, validate=validate.Length(equal=2))
    seller_vat_number = fields.String(allow_none=True, validate=validate.Length(max=32))
    seller_address = fields.List(
        fields.String(validate=validate.Length(max=200)), validate=validate.Length(max=6)
    )
    payment_terms_days = fields.Integer(validate=validate.Range(min=0, max=180))
    payment_instructions = fields.String(validate=validate.Length(max=2000))
    reminder_days = fields.List(
        fields.Integer(validate=validate.Range(min=0, max=365)),
        validate=validate.Length(max=10),
        metadata={"description": "dunning: remind the customer this many days after the due date"},
    )
    past_due_after_days = fields.Integer(
        validate=validate.Range(min=0, max=365),
        metadata={"description": "the invoice's subscriptions become past due"},
    )
    suspend_after_days = fields.Integer(
        validate=validate.Range(min=0, max=365),
        metadata={"description": "their instances are stopped (kept) until the invoice is paid"},
    )
    cancel_after_days = fields.Integer(
        validate=validate.Range(min=0, max=365),
        metadata={"description": "they are cancelled and their instances removed"},
    )


class TaxRateSchema(Schema):
    id = fields.UUID(dump_only=True)
    seller_country = fields.String(required=True, validate=validate.Length(equal=2))
    buyer_country = fields.String(
        required=True,
        validate=validate.Length(min=1, max=2),
        metadata={"description": "ISO code, or * for any"},
    )
    rate = Amount(required=True, metadata={"description": 'percent, e.g. "22"'})
    name = fields.String(load_default="VAT", validate=validate.Length(max=60))


def _refused(exc: BillingError) -> ApiError:
    current_session().rollback()
    return invalid(exc.field, exc.message)


@blp.route("/admin/billing-settings")
class BillingSettingsResource(MethodView):
    @blp.response(200, BillingSettingsSchema)
    @roles_required(Role.ADMIN)
    def get(self) -> Any:
        """The seller details and payment terms printed on this marketplace's invoices."""
        settings = taxes.settings_of(current_session(), require_identity().marketplace.id)
        current_session().commit()
        return settings

    @blp.arguments(BillingSettingsSchema)
    @blp.response(200, BillingSettingsSchema)
    @roles_required(Role.ADMIN)
    def patch(self, data: dict[str, Any]) -> Any:
        """Change them; invoices issued from now on print the new details."""
        try:
            settings = taxes.update_settings(current_session(), require_identity().marketplace.id, data)
        except BillingError as exc:
            raise _refused(exc) from None
        current_session().commit()
        return settings


@blp.route("/admin/tax-rates")
class TaxRates(MethodView):
    @blp.response(200, TaxRateSchema(many=True))
    @roles_required(Role.ADMIN)
    def get(self) -> list[TaxRate]:
        """The tax rates by seller and buyer country."""
        return list(
            current_session().scalars(
                sa.select(TaxRate)
                .where(TaxRate.marketplace_id == require_identity().marketplace.id)
                .order_by(TaxRate.seller_country, TaxRate.buyer_country)
            )
        )

    @blp.arguments(TaxRateSchema)
    @blp.response(201, TaxRateSchema)
    @roles_required(Role.ADMIN)
    def post(self, data: dict[str, Any]) -> TaxRate:
        """Add a rate for sales from a seller country to a buyer country (``*``: any other)."""
        try:
            found = taxes.add_rate(
                current_session(),
                require_identity().marketplace.id,
                data["seller_country"],
                data["buyer_country"],
                data["rate"],
                data["name"],
            )
        except BillingError as exc:
            raise _refused(exc) from None
        current_session().commit()
        return found


@blp.route("/admin/tax-rates/<uuid:rate_id>")
class TaxRateResource(MethodView):
    @blp.response(204)
    @roles_required(Role.ADMIN)
    def delete(self, rate_id: uuid.UUID) -> None:
        """Remove a rate: invoices issued from now on no longer use it."""
        found = current_session().get(TaxRate, rate_id)
        if found is None or found.marketplace_id != require_identity().marketplace.id:
            raise ApiError(404, "no such tax rate")
        current_session().delete(found)
        current_session().commit()


# ------------------------------------------------------------------ coupons
class CouponSchema(Schema):
    id = fields.UUID(dump_only=True)
    code = fields.String(required=True, validate=validate.Length(min=2, max=40))
    kind = fields.Enum(CouponKind, by_value=True, required=True)
    percent = Amount(
        load_default=None, allow_none=True, metadata={"description": "percent coupons: 0 to 100"}
    )
    amount = Amount(
        load_default=None, allow_none=True, metadata={"description": "fixed coupons: off each period"}
    )
    currency = fields.String(load_default=None, allow_none=True, validate=validate.Length(equal=3))
    duration = fields.Enum(CouponDuration, by_value=True, load_default=CouponDuration.ONCE)
    periods = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1, max=120))
    product_ids = fields.List(fields.UUID(), load_default=list)
    plan_codes = fields.List(fields.String(validate=validate.Length(max=50)), load_default=list)
    max_redemptions = fields.Integer(load_default=None, allow_none=True)
    expires_at = fields.AwareDateTime(load_default=None, allow_none=True)
    redemptions = fields.Integer(dump_only=True)


class RedeemSchema(Schema):
    code = fields.String(required=True, validate=validate.Length(min=1, max=40))


class RedemptionSchema(Schema):
    id = fields.UUID()
    coupon_id = fields.UUID()
    subscription_id = fields.UUID()
    redeemed_at = fields.AwareDateTime()
    periods_applied = fields.Integer()


@blp.route("/admin/coupons")
class Coupons(MethodView):
    @blp.response(200, CouponSchema(many=True))
    @roles_required(Role.ADMIN)
    def get(self) -> list[dict[str, Any]]:
        """The marketplace's coupons, with how often each was redeemed."""
        session = current_session()
        counts = dict(
            session.execute(
                sa.select(CouponRedemption.coupon_id, sa.func.count()).group_by(CouponRedemption.coupon_id)
            ).all()
        )
        found = session.scalars(
            sa.select(Coupon)
            .where(Coupon.marketplace_id == require_identity().marketplace.id)
            .order_by(Coupon.code)
        )
        return [{**attributes(c, CouponSchema), "redemptions": counts.get(c.id, 0)} for c in found]

    @blp.arguments(CouponSchema)
    @blp.response(201, CouponSchema)
    @roles_required(Role.ADMIN)
    def post(self, data: dict[str, Any]) -> Coupon:
        """Create a coupon."""
        try:
            coupon = coupons.create(current_session(), require_identity().marketplace.id, data)
        except BillingError as exc:
            raise _refused(exc) from None
        current_session().commit()
        return coupon


@blp.route("/subscriptions/<uuid:subscription_id>/coupon")
class SubscriptionCoupon(MethodView):
    @blp.arguments(RedeemSchema)
    @blp.response(201, RedemptionSchema)
    @roles_required(Role.CUSTOMER)
    def post(self, data: dict[str, Any], subscription_id: uuid.UUID) -> CouponRedemption:
        """Redeem a coupon on one of your subscriptions: its next periods' fees are discounted."""
        identity = require_identity()
        subscription = current_session().scalar(
            sa.select(Subscription).where(Subscription.id == subscription_id).with_for_update()
        )
        if (
            subscription is None
            or subscription.marketplace_id != identity.marketplace.id
            or subscription.customer_id not in identity.organisations_with(Role.CUSTOMER)
        ):
            raise ApiError(404, "no such subscription among yours")
        try:
            redemption = coupons.redeem(current_session(), subscription, data["code"], identity.user.id)
        except BillingError as exc:
            raise _refused(exc) from None
        current_session().commit()
        return redemption
