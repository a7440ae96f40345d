"""Structured e-invoices: UBL 2.1 ``Invoice`` and ``CreditNote`` documents following the
European standard EN 16931 (its core invoice usage specification), which customers'
accounting systems import.

Elements are written in the order the UBL 2.1 schema's sequences require; the tests
validate the output against OASIS's XSD. Business rules of EN 16931 the schema cannot
express are kept too: the totals are the sums of the lines, amounts have two decimals
(currencies without minor units, such as JPY, none), a price is never negative (a line
that credits has a negative quantity instead), one VAT breakdown per document with the
exemption reason where no VAT is charged, and a credit note names the invoice it corrects.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from babel.numbers import get_currency_precision
from lxml import etree as ET

from invoices.model import Document, Kind, Line, Party, TaxCategory

NS = {
    "inv": "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2",
    "cn": "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2",
    "cac": "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2",
    "cbc": "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2",
}

#: EN 16931's specification identifier (BT-24)
CUSTOMIZATION_ID = "urn:cen.eu:en16931:2017"
#: UNTDID 1001: commercial invoice, credit note
INVOICE_TYPE, CREDIT_NOTE_TYPE = "380", "381"
#: UNTDID 4461: credit transfer
CREDIT_TRANSFER = "30"
#: UN/ECE Recommendation 20 unit codes for the units plans use; anything else is "one"
UNIT_CODES = {
    "hour": "HUR",
    "hours": "HUR",
    "h": "HUR",
    "day": "DAY",
    "days": "DAY",
    "month": "MON",
    "months": "MON",
    "year": "ANN",
    "years": "ANN",
    "minute": "MIN",
    "minutes": "MIN",
    "second": "SEC",
    "seconds": "SEC",
    "gb": "E34",
    "gib": "E34",
    "mb": "4L",
    "mib": "4L",
    "tb": "E35",
    "tib": "E35",
    "gb-hour": "E34",
}
ONE = "C62"
#: VATEX codes for the categories that charge no VAT
EXEMPTION_CODES = {TaxCategory.REVERSE_CHARGE: "VATEX-EU-AE", TaxCategory.OUTSIDE_SCOPE: "VATEX-EU-O"}


def _tag(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def _add(parent: Any, name: str, text: str | None = None, **attributes: str) -> Any:
    """A ``cbc:``/``cac:`` child (``name`` like ``cbc:ID``) with optional text."""
    prefix, local = name.split(":", 1)
    element = ET.SubElement(parent, _tag(prefix, local), attributes)
    if text is not None:
        element.text = text
    return element


class _Writer:
    def __init__(self, document: Document) -> None:
        self.document = document
        self.currency = document.currency
        self.places = Decimal(1).scaleb(-get_currency_precision(document.currency))

    def amount(self, parent: Any, name: str, value: Decimal) -> None:
        _add(parent, name, str(value.quantize(self.places)), currencyID=self.currency)

    # ------------------------------------------------------------------ parties
    def party(self, parent: Any, wrapper: str, party: Party) -> None:
        node = _add(_add(parent, wrapper), "cac:Party")
        if party.email:
            _add(node, "cbc:EndpointID", party.email, schemeID="EM")
        _add(_add(node, "cac:PartyName"), "cbc:Name", party.name)
        address = _add(node, "cac:PostalAddress")
        street = list(party.street) if (party.street or party.city) else list(party.address)
        if street:
            _add(address, "cbc:StreetName", street[0])
        if len(street) > 1:
            _add(address, "cbc:AdditionalStreetName", street[1])
        if party.city:
            _add(address, "cbc:CityName", party.city)
        if party.postal_code:
            _add(address, "cbc:PostalZone", party.postal_code)
        if party.region:
            _add(address, "cbc:CountrySubentity", party.region)
        if len(street) > 2:
            _add(_add(address, "cac:AddressLine"), "cbc:Line", ", ".join(street[2:]))
        if party.country:
            _add(_add(address, "cac:Country"), "cbc:IdentificationCode", party.country)
        if party.vat_number:
            scheme = _add(node, "cac:PartyTaxScheme")
            _add(scheme, "cbc:CompanyID", _vat_id(party))
            _add(_add(scheme, "cac:TaxScheme"), "cbc:ID", "VAT")
        _add(_add(node, "cac:PartyLegalEntity"), "cbc:RegistrationName", party.name)
        if party.email:
            _add(_add(node, "cac:Contact"), "cbc:ElectronicMail", party.email)

    # ------------------------------------------------------------------ tax
    def tax_category(self, parent: Any, name: str, *, with_reason: bool) -> None:
        document = self.document
        category = _add(parent, name)
        _add(category, "cbc:ID", document.tax_category.value)
        if document.tax_category is not TaxCategory.OUTSIDE_SCOPE:  # EN 16931 BR-O-05: no rate
            _add(category, "cbc:Percent", _number(document.tax_rate))
        if with_reason and document.tax_category in EXEMPTION_CODES:
            _add(category, "cbc:TaxExemptionReasonCode", EXEMPTION_CODES[document.tax_category])
            _add(category, "cbc:TaxExemptionReason", document.tax_rule)
        _add(_add(category, "cac:TaxScheme"), "cbc:ID", "VAT")

    def tax_total(self, root: Any) -> None:
        total = _add(root, "cac:TaxTotal")
        self.amount(total, "cbc:TaxAmount", self.document.tax_total)
        subtotal = _add(total, "cac:TaxSubtotal")
        self.amount(subtotal, "cbc:TaxableAmount", self.document.subtotal)
        self.amount(subtotal, "cbc:TaxAmount", self.document.tax_total)
        self.tax_category(subtotal, "cac:TaxCategory", with_reason=True)

    # ------------------------------------------------------------------ lines
    def line(self, root: Any, position: int, line: Line) -> None:
        credit = self.document.kind is Kind.CREDIT_NOTE
        node = _add(root, "cac:CreditNoteLine" if credit else "cac:InvoiceLine")
        _add(node, "cbc:ID", str(position))
        quantity, price = _quantity_and_price(line)
        if (quantity, price) != (line.quantity, line.unit_price):
            # the line is not quantity x price (tiers, proration, a discount): say what it was
            _add(node, "cbc:Note", f"{_number(line.quantity)} {line.unit or 'units'}")
        _add(
            node,
            "cbc:CreditedQuantity" if credit else "cbc:InvoicedQuantity",
            _number(quantity),
            unitCode=_unit_code(line.unit) if quantity == line.quantity else ONE,
        )
        self.amount(node, "cbc:LineExtensionAmount", line.amount)
        if line.start and line.end:
            period = _add(node, "cac:InvoicePeriod")
            _add(period, "cbc:StartDate", line.start.isoformat())
            _add(period, "cbc:EndDate", line.end.isoformat())
        item = _add(node, "cac:Item")
        _add(item, "cbc:Name", line.description[:200])
        self.tax_category(item, "cac:ClassifiedTaxCategory", with_reason=False)
        _add(_add(node, "cac:Price"), "cbc:PriceAmount", _number(price), currencyID=self.currency)

    # ------------------------------------------------------------------ document
    def write(self) -> Any:
        document = self.document
        credit = document.kind is Kind.CREDIT_NOTE
        default = NS["cn"] if credit else NS["inv"]
        root = ET.Element(
            f"{{{default}}}{'CreditNote' if credit else 'Invoice'}",
            nsmap={None: default, "cac": NS["cac"], "cbc": NS["cbc"]},
        )
        _add(root, "cbc:CustomizationID", CUSTOMIZATION_ID)
        _add(root, "cbc:ID", document.number)
        _add(root, "cbc:IssueDate", _date(document.issued_at))
        if not credit and document.due_at is not None:
            _add(root, "cbc:DueDate", _date(document.due_at))
        _add(root, "cbc:CreditNoteTypeCode" if credit else "cbc:InvoiceTypeCode", _type_code(credit))
        if document.tax_rule:
            _add(root, "cbc:Note", document.tax_rule)
        _add(root, "cbc:DocumentCurrencyCode", document.currency)
        if document.buyer_reference:
            _add(root, "cbc:BuyerReference", document.buyer_reference)
        starts = [line.start for line in document.lines if line.start and line.end]
        ends = [line.end for line in document.lines if line.start and line.end]
        if starts and ends:
            period = _add(root, "cac:InvoicePeriod")
            _add(period, "cbc:StartDate", min(starts).isoformat())
            _add(period, "cbc:EndDate", max(e for e in ends if e is not None).isoformat())
        if credit and document.reference:
            reference = _add(_add(root, "cac:BillingReference"), "cac:InvoiceDocumentReference")
            _add(reference, "cbc:ID", document.reference)
            if document.reference_issued_at is not None:
                _add(reference, "cbc:IssueDate", _date(document.reference_issued_at))
        self.party(root, "cac:AccountingSupplierParty", document.seller)
        self.party(root, "cac:AccountingCustomerParty", document.buyer)
        if not credit:
            means = _add(root, "cac:PaymentMeans")
            _add(means, "cbc:PaymentMeansCode", CREDIT_TRANSFER)
            if document.payment_instructions:
                _add(means, "cbc:InstructionNote", document.payment_instructions[:500])
            _add(means, "cbc:PaymentID", document.number)
            if document.due_at is not None:
                _add(_add(root, "cac:PaymentTerms"), "cbc:Note", f"Due {_date(document.due_at)}")
        self.tax_total(root)
        totals = _add(root, "cac:LegalMonetaryTotal")
        self.amount(totals, "cbc:LineExtensionAmount", sum((x.amount for x in document.lines), Decimal(0)))
        self.amount(totals, "cbc:TaxExclusiveAmount", document.subtotal)
        self.amount(totals, "cbc:TaxInclusiveAmount", document.total)
        self.amount(totals, "cbc:PayableAmount", document.total)
        for position, line in enumerate(document.lines, start=1):
            self.line(root, position, line)
        return root


def render(document: Document) -> bytes:
    """The document as a UBL 2.1 Invoice (or CreditNote), UTF-8 XML."""
    root = _Writer(document).write()
    return bytes(ET.tostring(root, encoding="UTF-8", xml_declaration=True, pretty_print=True))


# ---------------------------------------------------------------------- helpers
def _date(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.date().isoformat()


def _type_code(credit: bool) -> str:
    return CREDIT_NOTE_TYPE if credit else INVOICE_TYPE


def _number(value: Decimal) -> str:
    """A decimal as XML writes it: no exponent, no trailing zeros after the point."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _unit_code(unit: str | None) -> str:
    return UNIT_CODES.get((unit or "").strip().lower(), ONE)


def _vat_id(party: Party) -> str:
    """The VAT number with its country prefix (EN 16931 wants it; Greece's is EL)."""
    vat = party.vat_number or ""
    prefix = "EL" if party.country == "GR" else (party.country or "")
    return vat if not prefix or vat[:2].isalpha() else prefix + vat


def _quantity_and_price(line: Line) -> tuple[Decimal, Decimal]:
    """The line as quantity x price, with the price never negative.

    A line that is exactly its quantity times its unit price keeps both. Any other line
    (graduated tiers, a prorated part, a coupon, a credit) is one unit at its amount, or
    minus one unit where the amount is negative.
    """
    if (
        line.unit_price is not None
        and line.unit_price >= 0
        and line.quantity > 0
        and line.quantity * line.unit_price == line.amount
    ):
        return line.quantity, line.unit_price
    return (Decimal(-1) if line.amount < 0 else Decimal(1)), abs(line.amount)
