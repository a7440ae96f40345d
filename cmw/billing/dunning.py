"""Dunning: what happens when an invoice is not paid by its due date.

For each issued invoice past its due date, with the marketplace's billing settings:
reminders are sent on the configured days after the due date (``invoice.overdue``; a
notification and an e-mail to the customer), its subscriptions become ``past_due`` after
``past_due_after_days``, their instances are suspended (stopped, kept with their data)
after ``suspend_after_days``, and they are cancelled at once (their instances removed)
after ``cancel_after_days``. Paying the invoice in full brings past-due subscriptions back
to active and starts suspended instances again. Every step checks the state it changes,
so running the job again, late, or in two workers at once (invoices are claimed
``FOR UPDATE SKIP LOCKED``) does each step once.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.billing import payments
from cmw.billing.models import BillingSettings, Invoice, InvoiceLine, InvoiceStatus
from cmw.db import utcnow
from cmw.events.service import emit
from cmw.money import format_amount
from cmw.orders import subscriptions
from cmw.orders.models import Subscription

log = logging.getLogger(__name__)
DEFAULTS = BillingSettings(
    reminder_days=[1, 7, 14], past_due_after_days=3, suspend_after_days=14, cancel_after_days=30
)


def subscriptions_of(session: Session, invoice: Invoice) -> list[Subscription]:
    ids = sa.select(InvoiceLine.subscription_id).where(InvoiceLine.invoice_id == invoice.id)
    return list(
        session.scalars(
            sa.select(Subscription)
            .where(Subscription.id.in_(ids))
            .order_by(Subscription.id)
            .with_for_update()
        )
    )


def dun(session: Session, invoice: Invoice, now: dt.datetime) -> dict[str, int]:
    """One overdue invoice's next steps (the caller commits)."""
    done = {"reminders": 0, "past_due": 0, "suspended": 0, "cancelled": 0}
    settings = session.get(BillingSettings, invoice.marketplace_id) or DEFAULTS
    assert invoice.due_at is not None
    owed = payments.outstanding(session, invoice)
    if owed <= 0:
        return done
    days = int((now - invoice.due_at).total_seconds() // 86400)
    reached = [d for d in sorted(settings.reminder_days or []) if d <= days]
    if len(reached) > invoice.reminders_sent:
        invoice.reminders_sent = len(reached)
        emit(
            session,
            "invoice.overdue",
            {
                "invoice_id": str(invoice.id),
                "customer_id": str(invoice.customer_id),
                "number": invoice.number,
                "days_overdue": days,
                "outstanding": format_amount(owed),
                "currency": invoice.currency,
                "due_at": invoice.due_at.isoformat(),
            },
            marketplace_id=invoice.marketplace_id,
        )
        done["reminders"] += 1
    if days >= settings.past_due_after_days:
        reason = f"invoice {invoice.number} is unpaid"
        for subscription in subscriptions_of(session, invoice):
            if days >= settings.cancel_after_days and subscription.status in subscriptions.LIVE:
                subscriptions.cancel(session, subscription, None, at_once=True, now=now)
                done["cancelled"] += 1
                continue
            if subscriptions.mark_past_due(session, subscription, reason, now):
                done["past_due"] += 1
            if days >= settings.suspend_after_days and subscriptions.suspend(
                session, subscription, reason, now
            ):
                done["suspended"] += 1
    session.flush()
    return done


def run(session_factory: Callable[[], Session], now: dt.datetime | None = None) -> dict[str, int]:
    """Every overdue issued invoice, each in its own transaction."""
    now = now or utcnow()
    totals = {"invoices": 0, "reminders": 0, "past_due": 0, "suspended": 0, "cancelled": 0}
    seen: set[uuid.UUID] = set()
    while True:
        with session_factory() as session:
            invoice = session.scalar(
                sa.select(Invoice)
                .where(
                    Invoice.status == InvoiceStatus.ISSUED,
                    Invoice.due_at < now,
                    Invoice.id.not_in(seen) if seen else sa.true(),
                )
                .order_by(Invoice.due_at, Invoice.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if invoice is None:
                return totals
            seen.add(invoice.id)
            for key, count in dun(session, invoice, now).items():
                totals[key] += count
            totals["invoices"] += 1
            session.commit()
