"""Invoice documents: the PDF of each issued invoice, rendered by the worker when the
invoice is issued and kept in cassetto; served from there (or rendered on demand if the
worker has not got to it yet). Credit notes have theirs too, and both have a UBL 2.1
e-invoice, made on demand."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from decimal import Decimal

from sqlalchemy.orm import Session

from cassetto.storage import Storage
from cmw.billing import taxes
from cmw.billing.models import CreditNote, Invoice, InvoiceStatus
from cmw.events.consumer import Event, EventConsumer
from cmw.marketplaces.models import Marketplace
from invoices import pdf, ubl
from invoices.model import Document, Kind, Line, Party, TaxCategory

log = logging.getLogger(__name__)


def pdf_key(invoice: Invoice) -> str:
    return f"invoices/{invoice.marketplace_id}/{invoice.id}/{invoice.number}.pdf"


def credit_note_pdf_key(note: CreditNote) -> str:
    return f"credit-notes/{note.marketplace_id}/{note.id}/{note.number}.pdf"


def _party(snapshot: dict[str, object], fallback: str) -> Party:
    def text(key: str) -> str | None:
        value = snapshot.get(key)
        return str(value) if value else None

    def lines(key: str) -> tuple[str, ...]:
        value = snapshot.get(key) or []
        return tuple(str(a) for a in value) if isinstance(value, list) else ()

    return Party(
        name=text("legal_name") or text("name") or fallback,
        address=lines("address"),
        country=text("country"),
        vat_number=text("vat_number"),
        email=text("email"),
        street=lines("street"),
        postal_code=text("postal_code"),
        city=text("city"),
        region=text("region"),
    )


def _tax_category(invoice: Invoice) -> TaxCategory:
    if invoice.tax_rule == taxes.REVERSE_CHARGE:
        return TaxCategory.REVERSE_CHARGE
    if invoice.tax_rate > 0:
        return TaxCategory.STANDARD
    return TaxCategory.OUTSIDE_SCOPE if invoice.tax_rule.startswith(taxes.NO_TAX) else TaxCategory.ZERO


def document_of(session: Session, invoice: Invoice) -> Document:
    marketplace = session.get(Marketplace, invoice.marketplace_id)
    assert marketplace is not None and invoice.number is not None and invoice.issued_at is not None
    lines = tuple(
        Line(
            description=line.description,
            period=(
                f"{line.period_start:%d %b %Y} to {line.period_end:%d %b %Y}"
                if line.period_start and line.period_end
                else ""
            ),
            quantity=Decimal(line.quantity),
            unit=line.unit,
            unit_price=line.unit_price,
            amount=line.amount,
            start=line.period_start.date() if line.period_start else None,
            # periods end at an instant (midnight); the last day billed is the day before
            end=_last_day(line.period_end) if line.period_end else None,
        )
        for line in invoice.lines
    )
    return Document(
        title="Invoice",
        number=invoice.number,
        issued_at=invoice.issued_at,
        due_at=invoice.due_at,
        currency=invoice.currency,
        marketplace=marketplace.name,
        colour=marketplace.primary_colour,
        seller=_party(invoice.seller or {}, marketplace.name),
        buyer=_party(invoice.buyer or {}, "Customer"),
        lines=lines,
        subtotal=invoice.subtotal,
        tax_rate=invoice.tax_rate,
        tax_rule=invoice.tax_rule or "No tax",
        tax_total=invoice.tax_total,
        total=invoice.total,
        payment_instructions=str((invoice.seller or {}).get("payment_instructions") or ""),
        footer=marketplace.legal_footer,
        tax_category=_tax_category(invoice),
        buyer_reference=str(invoice.customer_id),
    )


def credit_note_document(session: Session, note: CreditNote) -> Document:
    """A credit note as a document: one line crediting the amount, for the reason given."""
    invoice = session.get(Invoice, note.invoice_id)
    assert invoice is not None
    base = document_of(session, invoice)
    line = Line(
        description=note.reason,
        period="",
        quantity=Decimal(1),
        unit=None,
        unit_price=note.subtotal,
        amount=note.subtotal,
    )
    return dataclasses.replace(
        base,
        title="Credit note",
        kind=Kind.CREDIT_NOTE,
        number=note.number,
        issued_at=note.issued_at,
        due_at=None,
        lines=(line,),
        subtotal=note.subtotal,
        tax_total=note.tax_total,
        total=note.total,
        payment_instructions="",
        reference=base.number,
        reference_issued_at=base.issued_at,
    )


def _last_day(end: dt.datetime) -> dt.date:
    day = end.date()
    return day - dt.timedelta(days=1) if end.time() == dt.time(0) and day > dt.date.min else day


def _stored_pdf(storage: Storage, key: str, document: Callable[[], Document]) -> bytes:
    """The PDF stored under ``key``, or rendered (and stored) now."""
    if storage.exists(key):
        return storage.get(key)
    data = pdf.render(document())
    storage.put(key, data, "application/pdf", cache_control="private, max-age=86400")
    return data


def pdf_of(session: Session, storage: Storage, invoice: Invoice) -> bytes:
    return _stored_pdf(storage, pdf_key(invoice), lambda: document_of(session, invoice))


def credit_note_pdf_of(session: Session, storage: Storage, note: CreditNote) -> bytes:
    return _stored_pdf(storage, credit_note_pdf_key(note), lambda: credit_note_document(session, note))


def ubl_of(session: Session, invoice: Invoice) -> bytes:
    """The invoice as a UBL 2.1 e-invoice (EN 16931). Cheap and deterministic (an issued
    invoice never changes), so made on demand rather than stored."""
    return ubl.render(document_of(session, invoice))


def credit_note_ubl_of(session: Session, note: CreditNote) -> bytes:
    return ubl.render(credit_note_document(session, note))


class InvoiceDocuments(EventConsumer):
    """Renders each issued invoice's PDF into cassetto."""

    name = "invoice-documents"
    topics = ("invoice.issued",)

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def handle(self, session: Session, event: Event) -> None:
        try:
            invoice_id = uuid.UUID(str(event.payload.get("invoice_id")))
        except ValueError:
            return
        invoice = session.get(Invoice, invoice_id)
        if invoice is None or invoice.status is InvoiceStatus.DRAFT:
            return
        pdf_of(session, self.storage, invoice)


class FailedDeployments(EventConsumer):
    """A machine that failed without ever running is not charged for: what was invoiced for
    its subscription is credited back, and the customer is told (``credit_note.issued``)."""

    name = "billing-failed-deployments"
    topics = ("deployment.failed",)

    def handle(self, session: Session, event: Event) -> None:
        from cmw.billing import payments
        from deployer import service as deployments

        try:
            subscription_id = uuid.UUID(str(event.payload.get("subscription_id")))
        except ValueError:
            return
        if subscription_id not in deployments.never_ran(session, [subscription_id]):
            return
        payments.credit_subscription(
            session, subscription_id, "The instance could not be set up: nothing is charged for it."
        )
