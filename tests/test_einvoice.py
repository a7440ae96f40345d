"""E-invoices: UBL 2.1 Invoice and CreditNote documents (EN 16931), validated against
OASIS's UBL 2.1 XSD (installed by ``scripts/fetch-ubl-schema``, which ``make test`` runs),
checked for the standard's arithmetic, and served to the invoice's customer only."""

from __future__ import annotations

import datetime as dt
import io
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from pypdf import PdfReader
from sqlalchemy.orm import Session, sessionmaker

from cmw.billing import payments, taxes
from cmw.billing import service as billing
from cmw.billing.models import Invoice
from invoices import ubl
from invoices.model import Document, Kind, Line, Party, TaxCategory
from tests import catalog_data
from tests.test_billing import T0, subscribe, world  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parent.parent
D = Decimal
NS = {"cac": ubl.NS["cac"], "cbc": ubl.NS["cbc"], "inv": ubl.NS["inv"], "cn": ubl.NS["cn"]}


def _schema_dir() -> Path:
    return Path(os.environ.get("MERCATO_UBL_SCHEMA_DIR") or ROOT / ".venv" / "share" / "ubl-2.1")


@pytest.fixture(scope="module")
def schemas() -> dict[Kind, etree.XMLSchema]:
    folder = _schema_dir()
    if not (folder / "maindoc" / "UBL-Invoice-2.1.xsd").exists():
        pytest.fail(
            f"the UBL 2.1 schemas are not in {folder}: run `scripts/fetch-ubl-schema` (make test does)"
            " or set MERCATO_UBL_SCHEMA_DIR"
        )
    return {
        Kind.INVOICE: etree.XMLSchema(etree.parse(str(folder / "maindoc" / "UBL-Invoice-2.1.xsd"))),
        Kind.CREDIT_NOTE: etree.XMLSchema(etree.parse(str(folder / "maindoc" / "UBL-CreditNote-2.1.xsd"))),
    }


def valid(schemas: dict[Kind, etree.XMLSchema], data: bytes, kind: Kind = Kind.INVOICE) -> Any:
    """The parsed document, after asserting that the UBL schema accepts it."""
    tree = etree.fromstring(data)
    schema = schemas[kind]
    assert schema.validate(tree), "\n".join(str(e) for e in schema.error_log)
    return tree


def text(tree: Any, path: str) -> str:
    found = tree.xpath(path, namespaces=NS)
    assert found, f"{path} is missing"
    return str(found[0].text if hasattr(found[0], "text") else found[0])


SELLER = Party("Mercato S.r.l.", ("Via Roma 1", "00100 Roma"), "IT", "IT12345678901", "billing@mercato.test")
BUYER = Party(
    "Müller & Søn GmbH",
    ("Königstraße 5", "70173 Stuttgart"),
    "DE",
    "123456789",
    "buchhaltung@mueller.test",
    street=("Königstraße 5",),
    postal_code="70173",
    city="Stuttgart",
)


def sample(**changes: Any) -> Document:
    start, end = dt.date(2026, 11, 1), dt.date(2026, 11, 30)
    document = Document(
        title="Invoice",
        number="PLATFORM-2026-000042",
        issued_at=dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC),
        due_at=dt.datetime(2026, 12, 7, tzinfo=dt.UTC),
        currency="EUR",
        marketplace="Mercato",
        colour="#1f4e79",
        seller=SELLER,
        buyer=BUYER,
        lines=(
            Line("Wiki · Team · Base fee", "", D(1), None, D("49.00"), D("49.00"), start, end),
            Line("Wiki · Team · Seats", "", D(5), "seat", D("4.50"), D("22.50"), start, end),
            # graduated tiers: no single unit price
            Line("Wiki · Team · Traffic", "", D("1234.5"), "GB", None, D("10.37"), start, end),
            Line("Coupon WELCOME10", "", D(1), None, None, D("-8.19")),
        ),
        subtotal=D("73.68"),
        tax_rate=D(22),
        tax_rule="VAT 22%",
        tax_total=D("16.21"),
        total=D("89.89"),
        payment_instructions="IBAN IT60 X054 2811 1010 0000 0123 456",
        buyer_reference="customer-7",
    )
    return Document(**{**document.__dict__, **changes})


def test_an_invoice_is_valid_ubl_with_the_standards_totals(schemas: dict[Kind, etree.XMLSchema]) -> None:
    tree = valid(schemas, ubl.render(sample()))
    assert tree.tag == f"{{{NS['inv']}}}Invoice"
    assert text(tree, "cbc:CustomizationID") == "urn:cen.eu:en16931:2017"
    assert text(tree, "cbc:ID") == "PLATFORM-2026-000042"
    assert text(tree, "cbc:IssueDate") == "2026-11-23" and text(tree, "cbc:DueDate") == "2026-12-07"
    assert text(tree, "cbc:InvoiceTypeCode") == "380" and text(tree, "cbc:DocumentCurrencyCode") == "EUR"
    assert text(tree, "cac:InvoicePeriod/cbc:StartDate") == "2026-11-01"
    # the buyer's VAT number gets its country prefix; the address is in its parts
    buyer = "cac:AccountingCustomerParty/cac:Party/"
    assert text(tree, buyer + "cac:PartyTaxScheme/cbc:CompanyID") == "DE123456789"
    assert text(tree, buyer + "cac:PartyLegalEntity/cbc:RegistrationName") == "Müller & Søn GmbH"
    assert text(tree, buyer + "cac:PostalAddress/cbc:CityName") == "Stuttgart"
    assert text(tree, buyer + "cac:PostalAddress/cbc:PostalZone") == "70173"
    assert text(tree, buyer + "cbc:EndpointID") == "buchhaltung@mueller.test"
    assert (
        text(tree, "cac:AccountingSupplierParty/cac:Party/cac:PartyTaxScheme/cbc:CompanyID")
        == "IT12345678901"
    )

    totals = "cac:LegalMonetaryTotal/"
    assert text(tree, totals + "cbc:LineExtensionAmount") == "73.68"
    assert text(tree, totals + "cbc:TaxExclusiveAmount") == "73.68"
    assert text(tree, totals + "cbc:TaxInclusiveAmount") == "89.89"
    assert text(tree, totals + "cbc:PayableAmount") == "89.89"
    assert tree.xpath(f"{totals}cbc:PayableAmount/@currencyID", namespaces=NS) == ["EUR"]
    assert text(tree, "cac:TaxTotal/cbc:TaxAmount") == "16.21"
    assert text(tree, "cac:TaxTotal/cac:TaxSubtotal/cac:TaxCategory/cbc:ID") == "S"
    assert text(tree, "cac:TaxTotal/cac:TaxSubtotal/cac:TaxCategory/cbc:Percent") == "22"
    assert text(tree, "cac:PaymentMeans/cbc:PaymentID") == "PLATFORM-2026-000042"

    lines = tree.xpath("cac:InvoiceLine", namespaces=NS)
    assert [text(x, "cbc:LineExtensionAmount") for x in lines] == ["49.00", "22.50", "10.37", "-8.19"]
    seats, traffic, coupon = lines[1], lines[2], lines[3]
    assert text(seats, "cbc:InvoicedQuantity") == "5" and text(seats, "cac:Price/cbc:PriceAmount") == "4.5"
    # tiers: one unit at the line's amount, the real quantity in a note
    assert text(traffic, "cbc:InvoicedQuantity") == "1" and text(traffic, "cbc:Note") == "1234.5 GB"
    # a credit: minus one unit, the price stays positive
    assert (
        text(coupon, "cbc:InvoicedQuantity") == "-1" and text(coupon, "cac:Price/cbc:PriceAmount") == "8.19"
    )
    assert text(lines[0], "cac:Item/cac:ClassifiedTaxCategory/cbc:ID") == "S"


def test_reverse_charge_and_no_tax_carry_their_exemption_reason(
    schemas: dict[Kind, etree.XMLSchema],
) -> None:
    for category, rule, code in (
        (TaxCategory.REVERSE_CHARGE, taxes.REVERSE_CHARGE, "VATEX-EU-AE"),
        (TaxCategory.OUTSIDE_SCOPE, "No tax: no rate is configured for sales from IT to US", "VATEX-EU-O"),
    ):
        tree = valid(
            schemas,
            ubl.render(
                sample(tax_rate=D(0), tax_rule=rule, tax_total=D(0), total=D("73.68"), tax_category=category)
            ),
        )
        breakdown = "cac:TaxTotal/cac:TaxSubtotal/"
        assert text(tree, breakdown + "cac:TaxCategory/cbc:ID") == category.value
        assert text(tree, breakdown + "cac:TaxCategory/cbc:TaxExemptionReasonCode") == code
        assert text(tree, breakdown + "cac:TaxCategory/cbc:TaxExemptionReason") == rule
        assert text(tree, breakdown + "cbc:TaxAmount") == "0.00"
        # EN 16931 BR-O-05: "not subject to VAT" carries no rate at all
        rates = tree.xpath(breakdown + "cac:TaxCategory/cbc:Percent", namespaces=NS)
        assert [r.text for r in rates] == ([] if category is TaxCategory.OUTSIDE_SCOPE else ["0"])
        assert text(tree, "cac:LegalMonetaryTotal/cbc:PayableAmount") == "73.68"


def test_a_currency_without_minor_units_has_no_decimals(schemas: dict[Kind, etree.XMLSchema]) -> None:
    lines = (
        Line("Licence", "", D(1), None, D(4900), D(4900)),
        Line("Seats", "", D(5), "seat", D(450), D(2250)),
    )
    tree = valid(
        schemas,
        ubl.render(sample(currency="JPY", lines=lines, subtotal=D(7150), tax_total=D(1573), total=D(8723))),
    )
    assert text(tree, "cac:LegalMonetaryTotal/cbc:PayableAmount") == "8723"
    assert tree.xpath("cac:InvoiceLine/cbc:LineExtensionAmount/text()", namespaces=NS) == ["4900", "2250"]


def test_a_credit_note_names_the_invoice_it_corrects(schemas: dict[Kind, etree.XMLSchema]) -> None:
    note = sample(
        title="Credit note",
        kind=Kind.CREDIT_NOTE,
        number="PLATFORM-CN-2026-000003",
        due_at=None,
        lines=(Line("The instance could not be set up", "", D(1), None, D("49.00"), D("49.00")),),
        subtotal=D("49.00"),
        tax_total=D("10.78"),
        total=D("59.78"),
        reference="PLATFORM-2026-000042",
        reference_issued_at=dt.datetime(2026, 11, 23, tzinfo=dt.UTC),
    )
    tree = valid(schemas, ubl.render(note), Kind.CREDIT_NOTE)
    assert tree.tag == f"{{{NS['cn']}}}CreditNote"
    assert text(tree, "cbc:CreditNoteTypeCode") == "381"
    assert text(tree, "cac:BillingReference/cac:InvoiceDocumentReference/cbc:ID") == "PLATFORM-2026-000042"
    assert text(tree, "cac:BillingReference/cac:InvoiceDocumentReference/cbc:IssueDate") == "2026-11-23"
    assert text(tree, "cac:CreditNoteLine/cbc:CreditedQuantity") == "1"
    assert text(tree, "cac:LegalMonetaryTotal/cbc:PayableAmount") == "59.78"
    assert not tree.xpath("cac:PaymentMeans", namespaces=NS)  # nothing to pay


amounts = st.decimals(min_value=D("-500"), max_value=D("5000"), places=2, allow_nan=False)
lines_strategy = st.lists(
    st.tuples(
        st.decimals(min_value=D("0.001"), max_value=D("10000"), places=3, allow_nan=False),
        st.one_of(st.none(), st.decimals(min_value=D(0), max_value=D(100), places=4, allow_nan=False)),
        amounts,
        st.sampled_from([None, "hour", "GB", "seat", "month"]),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(raw=lines_strategy, rate=st.sampled_from([D(0), D(10), D("21"), D("22")]))
def test_any_invoice_is_valid_and_each_line_is_quantity_times_price(
    schemas: dict[Kind, etree.XMLSchema], raw: list[Any], rate: Decimal
) -> None:
    lines = []
    for quantity, unit_price, amount, unit in raw:
        # half the lines priced exactly (quantity x price), the others not (tiers, credits)
        exact = (
            unit_price is not None and (quantity * unit_price).quantize(D("0.01")) == quantity * unit_price
        )
        lines.append(Line("x", "", quantity, unit, unit_price, quantity * unit_price if exact else amount))
    subtotal = sum((line.amount for line in lines), D(0))
    tax = (subtotal * rate / 100).quantize(D("0.01"))
    tree = valid(
        schemas,
        ubl.render(
            sample(lines=tuple(lines), subtotal=subtotal, tax_rate=rate, tax_total=tax, total=subtotal + tax)
        ),
    )
    total = D(0)
    for node in tree.xpath("cac:InvoiceLine", namespaces=NS):
        quantity = D(text(node, "cbc:InvoicedQuantity"))
        price = D(text(node, "cac:Price/cbc:PriceAmount"))
        amount = D(text(node, "cbc:LineExtensionAmount"))
        assert price >= 0
        assert (quantity * price).quantize(D("0.01")) == amount
        total += amount
    assert D(text(tree, "cac:LegalMonetaryTotal/cbc:LineExtensionAmount")) == total == subtotal
    assert D(text(tree, "cac:LegalMonetaryTotal/cbc:TaxInclusiveAmount")) == total + tax


def test_customers_download_e_invoices_of_their_invoices_and_credit_notes(
    app: Flask,
    committed_db: sessionmaker[Session],
    schemas: dict[Kind, etree.XMLSchema],
    world: dict[str, Any],  # noqa: F811
) -> None:
    subscribe(committed_db, world, "seats", quantity=3)
    with committed_db() as session:
        catalog_data.add_customer(session, "einvoice-other@example.test")
        session.commit()
    report = billing.run(committed_db, T0 + dt.timedelta(hours=1), now=T0 + dt.timedelta(hours=1))
    (number,) = report.invoices
    with committed_db() as session:
        invoice = session.query(Invoice).filter_by(number=number).one()
        note = payments.issue_credit_note(session, invoice, D("10.00"), "Goodwill: two days without service")
        session.commit()
        invoice_id, note_id, note_number = invoice.id, note.id, note.number

    owner, other = app.test_client(), app.test_client()
    for browser, email in ((owner, "payer@example.test"), (other, "einvoice-other@example.test")):
        signed = browser.post("/api/v1/session", json={"email": email, "password": "long-enough-pw"})
        assert signed.status_code == 200

    response = owner.get(f"/api/v1/invoices/{invoice_id}/ubl")
    assert response.status_code == 200 and response.mimetype == "application/xml"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{number}.xml"'
    tree = valid(schemas, response.data)
    assert text(tree, "cbc:ID") == number
    assert text(tree, "cac:LegalMonetaryTotal/cbc:PayableAmount") == "48.50"
    assert text(tree, "cac:AccountingCustomerParty/cac:Party/cac:PartyLegalEntity/cbc:RegistrationName") == (
        "Customer Srl"
    )
    assert [x.text for x in tree.xpath("cac:InvoiceLine/cbc:LineExtensionAmount", namespaces=NS)] == [
        "25.00",
        "10.00",
        "13.50",
    ]
    # the line's billed period, as dates
    assert text(tree, "cac:InvoiceLine[2]/cac:InvoicePeriod/cbc:StartDate") == T0.date().isoformat()
    page = owner.get(f"/account/invoices/{invoice_id}/ubl")
    assert page.status_code == 200 and page.data == response.data

    note_xml = owner.get(f"/api/v1/credit-notes/{note_id}/ubl")
    assert note_xml.status_code == 200
    credit = valid(schemas, note_xml.data, Kind.CREDIT_NOTE)
    assert text(credit, "cbc:ID") == note_number
    assert text(credit, "cac:BillingReference/cac:InvoiceDocumentReference/cbc:ID") == number
    assert text(credit, "cac:LegalMonetaryTotal/cbc:PayableAmount") == "10.00"
    assert text(credit, "cac:CreditNoteLine/cac:Item/cbc:Name") == "Goodwill: two days without service"
    note_pdf = owner.get(f"/api/v1/credit-notes/{note_id}/pdf")
    assert note_pdf.status_code == 200 and note_pdf.mimetype == "application/pdf"
    printed = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(note_pdf.data)).pages)
    assert f"Credit note {note_number}" in printed and f"corrects invoice {number}" in printed
    assert "Goodwill: two days without service" in printed and "Please pay" not in printed
    shown = owner.get(f"/account/invoices/{invoice_id}").get_data(as_text=True)
    assert f"/account/credit-notes/{note_id}/pdf" in shown and f"/account/invoices/{invoice_id}/ubl" in shown
    assert owner.get(f"/account/credit-notes/{note_id}/pdf").data == note_pdf.data

    for path in (
        f"/api/v1/invoices/{invoice_id}/ubl",
        f"/account/invoices/{invoice_id}/ubl",
        f"/api/v1/credit-notes/{note_id}/ubl",
        f"/api/v1/credit-notes/{note_id}/pdf",
        f"/account/credit-notes/{note_id}/ubl",
    ):
        assert other.get(path).status_code == 404, path
