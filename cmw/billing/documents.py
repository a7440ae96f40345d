"""Invoice documents: the PDF of each issued invoice, rendered by the worker when the
invoice is issued and kept in cassetto; served from there (or rendered on demand if the
worker has not got to it yet)."""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal

from sqlalchemy.orm import Session

from cassetto.storage import Storage
from cmw.billing.models import Invoice, InvoiceStatus
from cmw.events.consumer import Event, EventConsumer
from cmw.marketplaces.models import Marketplace
from invoices import pdf

log = logging.getLogger(__name__)


def pdf_key(invoice: Invoice) -> str:
    return f"invoices/{invoice.marketplace_id}/{invoice.id}/{invoice.number}.pdf"


def _party(snapshot: dict[str, object], fallback: str) -> pdf.Party:
    address = snapshot.get("address") or []
    return pdf.Party(
        name=str(snapshot.get("legal_name") or snapshot.get("name") or fallback),
        address=tuple(str(a) for a in address) if isinstance(address, list) else (),
        country=str(snapshot["country"]) if snapshot.get("country") else None,
        vat_number=str(snapshot["vat_number"]) if snapshot.get("vat_number") else None,
        email=str(snapshot["email"]) if snapshot.get("email") else None,
    )


def document_of(session: Session, invoice: Invoice) -> pdf.Document:
    marketplace = session.get(Marketplace, invoice.marketplace_id)
    assert marketplace is not None and invoice.number is not None and invoice.issued_at is not None
    lines = tuple(
        pdf.Line(
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
        )
        for line in invoice.lines
    )
    return pdf.Document(
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
    )


def pdf_of(session: Session, storage: Storage, invoice: Invoice) -> bytes:
    """The invoice's PDF: the stored one, or rendered (and stored) now."""
    key = pdf_key(invoice)
    if storage.exists(key):
        return storage.get(key)
    data = pdf.render(document_of(session, invoice))
    storage.put(key, data, "application/pdf", cache_control="private, max-age=86400")
    return data


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
