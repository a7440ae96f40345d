"""Who earned what: each marketplace's and each vendor's part of the invoices issued in its
part of the tree, from the revenue split every invoice line records
(``cmw.marketplaces.pricing``).

A marketplace *sold* what it invoiced its own customers (net of tax; the tax is its to
remit), *received* what the marketplaces under it owe it for their sales, *owes* its
parent (or, where it hosts the product, the vendor) the parent's price of everything it
and its children sold, and *earned* the rest: ``sold + received - owes``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cmw.billing.models import Invoice, InvoiceLine, InvoiceStatus
from cmw.db import utcnow
from cmw.marketplaces.service import subtree_ids

ZERO = Decimal(0)
COUNTED = (InvoiceStatus.ISSUED, InvoiceStatus.PAID)


def _first_month(now: dt.datetime, months: int) -> dt.datetime:
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for _ in range(months - 1):
        start = (start - dt.timedelta(days=1)).replace(day=1)
    return start


def _lines(
    session: Session, marketplace_ids: list[uuid.UUID], since: dt.datetime, *extra: Any
) -> Iterator[tuple[uuid.UUID, dt.datetime | None, str, InvoiceStatus, uuid.UUID | None, Decimal, Any]]:
    """(issuer, issued at, currency, status, vendor, amount, split) of the counted invoice
    lines of the marketplaces' invoices issued since ``since``."""
    yield from session.execute(
        sa.select(
            Invoice.marketplace_id,
            Invoice.issued_at,
            Invoice.currency,
            Invoice.status,
            InvoiceLine.vendor_id,
            InvoiceLine.amount,
            InvoiceLine.revenue_split,
        )
        .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
        .where(
            Invoice.marketplace_id.in_(marketplace_ids),
            Invoice.status.in_(COUNTED),
            Invoice.issued_at >= since,
            *extra,
        )
    ).all()


def _month(at: dt.datetime | None) -> str:
    return f"{at:%Y-%m}" if at is not None else ""


def marketplace_revenue(
    session: Session, marketplace_id: uuid.UUID, months: int = 12, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """The marketplace's revenue by month of issue and currency, oldest first: what it sold,
    received from the marketplaces under it, owes up, and earned."""
    since = _first_month(now or utcnow(), months)
    me = str(marketplace_id)
    rows: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(
        lambda: {"sold": ZERO, "tax": ZERO, "received": ZERO, "owes": ZERO}
    )
    for issuer, issued_at, currency, _status, _vendor, amount, split in _lines(
        session, subtree_ids(session, marketplace_id), since
    ):
        row = rows[(_month(issued_at), currency)]
        owed = [Decimal(part["amount"]) for part in split or ()]
        if issuer == marketplace_id:
            row["sold"] += amount
            row["owes"] += owed[0] if owed else ZERO
            continue
        for index, part in enumerate(split or ()):
            if part.get("marketplace_id") == me:
                row["received"] += owed[index]
                row["owes"] += owed[index + 1]
                break
    taxes = session.execute(
        sa.select(Invoice.issued_at, Invoice.currency, Invoice.tax_total).where(
            Invoice.marketplace_id == marketplace_id, Invoice.status.in_(COUNTED), Invoice.issued_at >= since
        )
    ).all()
    for issued_at, currency, tax in taxes:
        if tax:
            rows[(_month(issued_at), currency)]["tax"] += tax
    return [
        {
            "month": month,
            "currency": currency,
            **values,
            "earned": values["sold"] + values["received"] - values["owes"],
        }
        for (month, currency), values in sorted(rows.items())
    ]


def vendor_revenue(
    session: Session,
    marketplace_id: uuid.UUID,
    vendor_ids: Iterable[uuid.UUID],
    months: int = 12,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """What the vendors' products were invoiced for in the marketplace and the ones under
    it, by month of issue and currency, oldest first: invoiced net of tax, how much of it
    is paid, and the vendors' part of it (what the hosting marketplace owes them)."""
    since = _first_month(now or utcnow(), months)
    ids = list(vendor_ids)
    rows: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(
        lambda: {"invoiced": ZERO, "paid": ZERO, "earned": ZERO}
    )
    for _issuer, issued_at, currency, status, _vendor, amount, split in _lines(
        session, subtree_ids(session, marketplace_id), since, InvoiceLine.vendor_id.in_(ids)
    ):
        row = rows[(_month(issued_at), currency)]
        row["invoiced"] += amount
        if status is InvoiceStatus.PAID:
            row["paid"] += amount
        # lines billed before the split was recorded were the vendor's whole
        row["earned"] += Decimal(split[-1]["amount"]) if split else amount
    return [{"month": m, "currency": c, **values} for (m, c), values in sorted(rows.items())]


def vendor_lines(session: Session, invoice_id: uuid.UUID) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """The invoice's lines per vendor, as each vendor may see them (its own lines only)."""
    found: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    for line in session.scalars(
        sa.select(InvoiceLine)
        .where(InvoiceLine.invoice_id == invoice_id, InvoiceLine.vendor_id.is_not(None))
        .order_by(InvoiceLine.position)
    ):
        assert line.vendor_id is not None
        found[line.vendor_id].append(
            {
                "description": line.description,
                "kind": str(line.kind),
                "subscription_id": str(line.subscription_id) if line.subscription_id else None,
                "product_id": str(line.product_id) if line.product_id else None,
                "quantity": str(line.quantity),
                "unit": line.unit,
                "amount": str(line.amount),
            }
        )
    return dict(found)
