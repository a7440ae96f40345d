"""Payments against invoices and credit notes correcting them.

An invoice's outstanding amount is its total less its payments and credit notes; a
payment may not exceed it, nor may a credit note exceed what is left to credit. An invoice
paid (or credited) in full is marked paid; one credited in full before any payment is void.
Credit notes have their own gapless series per marketplace and year (``<SERIES>-CN``),
numbered inside the issuing transaction like invoices.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.billing.errors import BillingError
from cmw.billing.models import CreditNote, Invoice, InvoiceLine, InvoiceStatus, Payment, PaymentMethod
from cmw.db import utcnow
from cmw.events.service import emit
from cmw.money import format_amount, round_to_minor

ZERO = Decimal(0)


def paid(session: Session, invoice: Invoice) -> Decimal:
    total = session.scalar(sa.select(sa.func.sum(Payment.amount)).where(Payment.invoice_id == invoice.id))
    return Decimal(total or 0)


def credited(session: Session, invoice: Invoice) -> Decimal:
    total = session.scalar(
        sa.select(sa.func.sum(CreditNote.total)).where(CreditNote.invoice_id == invoice.id)
    )
    return Decimal(total or 0)


def outstanding(session: Session, invoice: Invoice) -> Decimal:
    return invoice.total - paid(session, invoice) - credited(session, invoice)


def _lock(session: Session, invoice: Invoice) -> Invoice:
    locked = session.scalar(sa.select(Invoice).where(Invoice.id == invoice.id).with_for_update())
    assert locked is not None
    return locked


def _settle(session: Session, invoice: Invoice) -> None:
    if outstanding(session, invoice) <= 0 and invoice.status is InvoiceStatus.ISSUED:
        invoice.status = InvoiceStatus.PAID if paid(session, invoice) > 0 else InvoiceStatus.VOID
        session.flush()
        # nothing is owed any more, whether paid or credited in full: past due ends, and a
        # suspended machine starts again
        _paid_up(session, invoice)
        if invoice.status is InvoiceStatus.PAID:
            emit(
                session,
                "invoice.paid",
                {
                    "invoice_id": str(invoice.id),
                    "customer_id": str(invoice.customer_id),
                    "number": invoice.number,
                },
                marketplace_id=invoice.marketplace_id,
            )


def _paid_up(session: Session, invoice: Invoice) -> None:
    """Past-due subscriptions of a paid invoice are active again, unless another of their
    invoices is still overdue."""
    from cmw.billing.dunning import subscriptions_of
    from cmw.orders import subscriptions

    now = utcnow()
    for subscription in subscriptions_of(session, invoice):
        overdue = session.scalar(
            sa.select(Invoice.id)
            .join(InvoiceLine, InvoiceLine.invoice_id == Invoice.id)
            .where(
                InvoiceLine.subscription_id == subscription.id,
                Invoice.id != invoice.id,
                Invoice.status == InvoiceStatus.ISSUED,
                Invoice.due_at < now,
            )
            .limit(1)
        )
        if overdue is None:
            subscriptions.mark_paid_up(session, subscription, now)


def record_payment(
    session: Session,
    invoice: Invoice,
    amount: Decimal,
    *,
    method: PaymentMethod = PaymentMethod.MANUAL,
    reference: str | None = None,
    actor_id: uuid.UUID | None = None,
    at: dt.datetime | None = None,
) -> Payment:
    """Money received for ``invoice``: never more than it still owes."""
    invoice = _lock(session, invoice)
    if invoice.status not in (InvoiceStatus.ISSUED, InvoiceStatus.PAID):
        raise BillingError(
            "invoice", f"invoice {invoice.number or 'draft'} is {invoice.status.value}: it takes no payment"
        )
    if amount <= 0:
        raise BillingError("amount", "a payment is a positive amount")
    if round_to_minor(amount, invoice.currency) != amount:
        raise BillingError("amount", f"{invoice.currency} amounts have at most the currency's minor unit")
    owed = outstanding(session, invoice)
    if amount > owed:
        raise BillingError(
            "amount",
            f"invoice {invoice.number} owes {format_amount(owed)} {invoice.currency}: the payment is larger",
        )
    if reference and session.scalar(
        sa.select(Payment.id).where(Payment.method == method, Payment.reference == reference)
    ):
        raise BillingError(
            "reference", f"a {method.value} payment with reference {reference!r} is recorded already"
        )
    payment = Payment(
        invoice_id=invoice.id,
        amount=amount,
        currency=invoice.currency,
        method=method,
        reference=reference,
        received_at=at or utcnow(),
        recorded_by_id=actor_id,
    )
    session.add(payment)
    session.flush()
    _settle(session, invoice)
    return payment


def issue_credit_note(
    session: Session,
    invoice: Invoice,
    net: Decimal,
    reason: str,
    *,
    subscription_id: uuid.UUID | None = None,
    now: dt.datetime | None = None,
) -> CreditNote:
    """Credit ``net`` (before tax; tax at the invoice's rate is credited with it)."""
    from cmw.billing.service import next_number  # the one numbering routine

    now = now or utcnow()
    invoice = _lock(session, invoice)
    if invoice.status is InvoiceStatus.DRAFT:
        raise BillingError("invoice", "a draft is changed, not credited")
    if not reason.strip():
        raise BillingError("reason", "say why the invoice is credited")
    if net <= 0 or round_to_minor(net, invoice.currency) != net:
        raise BillingError("amount", f"a positive amount in {invoice.currency}, to the minor unit")
    tax = round_to_minor(net * invoice.tax_rate / 100, invoice.currency)
    creditable = invoice.total - credited(session, invoice)
    if net + tax > creditable:
        raise BillingError(
            "amount",
            f"invoice {invoice.number} can be credited {format_amount(creditable)} {invoice.currency} more;"
            f" {format_amount(net + tax)} asked",
        )
    series, year, sequence = next_number(session, invoice.marketplace_id, now, credit_note=True)
    note = CreditNote(
        invoice_id=invoice.id,
        marketplace_id=invoice.marketplace_id,
        customer_id=invoice.customer_id,
        currency=invoice.currency,
        series=series,
        year=year,
        sequence=sequence,
        number=f"{series}-{year}-{sequence:06d}",
        issued_at=now,
        reason=reason.strip(),
        subtotal=net,
        tax_total=tax,
        total=net + tax,
        subscription_id=subscription_id,
    )
    session.add(note)
    session.flush()
    emit(
        session,
        "credit_note.issued",
        {
            "credit_note_id": str(note.id),
            "invoice_id": str(invoice.id),
            "customer_id": str(invoice.customer_id),
            "number": note.number,
            "invoice_number": invoice.number,
            "total": format_amount(note.total),
            "currency": note.currency,
            "reason": note.reason,
            **({"subscription_id": str(subscription_id)} if subscription_id else {}),
        },
        marketplace_id=invoice.marketplace_id,
    )
    _settle(session, invoice)
    return note


def credit_subscription(
    session: Session, subscription_id: uuid.UUID, reason: str, now: dt.datetime | None = None
) -> list[CreditNote]:
    """Credit back everything invoiced for a subscription and not yet credited for it, one
    credit note per invoice (a machine that never ran is not charged)."""
    notes = []
    invoices = session.scalars(
        sa.select(Invoice)
        .join(InvoiceLine, InvoiceLine.invoice_id == Invoice.id)
        .where(
            InvoiceLine.subscription_id == subscription_id,
            Invoice.status.in_([InvoiceStatus.ISSUED, InvoiceStatus.PAID]),
        )
        .distinct()
        .order_by(Invoice.issued_at)
    ).all()
    for invoice in invoices:
        billed = Decimal(
            session.scalar(
                sa.select(sa.func.sum(InvoiceLine.amount)).where(
                    InvoiceLine.invoice_id == invoice.id, InvoiceLine.subscription_id == subscription_id
                )
            )
            or 0
        )
        already = Decimal(
            session.scalar(
                sa.select(sa.func.sum(CreditNote.subtotal)).where(
                    CreditNote.invoice_id == invoice.id, CreditNote.subscription_id == subscription_id
                )
            )
            or 0
        )
        net = billed - already
        if net > 0:
            notes.append(
                issue_credit_note(session, invoice, net, reason, subscription_id=subscription_id, now=now)
            )
    return notes
