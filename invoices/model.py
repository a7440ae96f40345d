"""What an invoice or credit note document says, independent of its format: the PDF
(:mod:`invoices.pdf`) and the UBL 2.1 e-invoice (:mod:`invoices.ubl`) are both rendered
from a :class:`Document`, never from database rows, so they can run anywhere and be
tested on their own."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from decimal import Decimal


class Kind(enum.StrEnum):
    INVOICE = "invoice"
    CREDIT_NOTE = "credit_note"


class TaxCategory(enum.StrEnum):
    """The VAT category of the document's lines (UNTDID 5305, as EN 16931 uses it)."""

    #: standard rate
    STANDARD = "S"
    #: a configured rate of 0 %
    ZERO = "Z"
    #: EU reverse charge: the buyer accounts for the VAT
    REVERSE_CHARGE = "AE"
    #: not subject to VAT (no rate applies)
    OUTSIDE_SCOPE = "O"


@dataclasses.dataclass(frozen=True)
class Line:
    description: str
    period: str
    quantity: Decimal
    unit: str | None
    unit_price: Decimal | None
    amount: Decimal
    #: the period the line bills, when it has one (the e-invoice carries it as dates)
    start: dt.date | None = None
    end: dt.date | None = None


@dataclasses.dataclass(frozen=True)
class Party:
    name: str
    #: the printed address, one line each
    address: tuple[str, ...] = ()
    country: str | None = None
    vat_number: str | None = None
    email: str | None = None
    #: the structured address where it is known (the e-invoice's fields); else the lines are used
    street: tuple[str, ...] = ()
    postal_code: str | None = None
    city: str | None = None
    region: str | None = None


@dataclasses.dataclass(frozen=True)
class Document:
    title: str  # "Invoice" or "Credit note"
    number: str
    issued_at: dt.datetime
    due_at: dt.datetime | None
    currency: str
    marketplace: str
    colour: str
    seller: Party
    buyer: Party
    lines: tuple[Line, ...]
    subtotal: Decimal
    tax_rate: Decimal
    tax_rule: str
    tax_total: Decimal
    total: Decimal
    payment_instructions: str = ""
    footer: str = ""
    reference: str = ""  # the invoice a credit note corrects
    kind: Kind = Kind.INVOICE
    tax_category: TaxCategory = TaxCategory.STANDARD
    #: when the invoice a credit note corrects was issued
    reference_issued_at: dt.datetime | None = None
    #: the buyer's own reference for the document (their customer account, say)
    buyer_reference: str = ""
