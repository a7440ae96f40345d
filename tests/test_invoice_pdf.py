"""Invoice PDFs: the text in them (number, totals, Unicode names and currency signs), page
1 rendered to an image, and the PDF served to its customer only, stored by the worker."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import pypdfium2
from flask import Flask
from pypdf import PdfReader
from sqlalchemy.orm import Session, sessionmaker

from cmw.billing import service as billing
from cmw.billing.documents import InvoiceDocuments, pdf_key
from cmw.billing.models import Invoice
from cmw.events.consumer import Event
from invoices import pdf
from invoices.model import Document, Line, Party
from tests import catalog_data
from tests.test_billing import T0, subscribe, world  # noqa: F401  (the fixture)

OUTPUT = Path(__file__).resolve().parent.parent / "var" / "test-output"
D = Decimal


def _text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def sample(currency: str = "JPY") -> Document:
    return Document(
        title="Invoice",
        number="PLATFORM-2026-000042",
        issued_at=dt.datetime(2026, 11, 23, tzinfo=dt.UTC),
        due_at=dt.datetime(2026, 12, 7, tzinfo=dt.UTC),
        currency=currency,
        marketplace="Mercato",
        colour="#1f4e79",
        seller=Party("Mercato S.r.l.", ("Via Roma 1", "00100 Roma"), "IT", "IT12345678901"),
        buyer=Party("Müller & Søn GmbH", ("Königstraße 5", "70173 Stuttgart"), "DE", "DE123456789"),
        lines=(
            Line("Wiki Server · Team · Base fee", "01 Nov 2026 to 01 Dec 2026", D(1), None, D(4900), D(4900)),
            Line("Wiki Server · Team · Seats", "01 Nov 2026 to 01 Dec 2026", D(5), "seat", D(450), D(2250)),
        ),
        subtotal=D(7150),
        tax_rate=D(0),
        tax_rule="Reverse charge: VAT to be accounted for by the recipient",
        tax_total=D(0),
        total=D(7150),
        payment_instructions="IBAN IT60 X054 2811 1010 0000 0123 456",
        footer="Mercato S.r.l. · Società a responsabilità limitata",
    )


def test_the_pdf_carries_the_number_totals_and_unicode_names() -> None:
    data = pdf.render(sample())
    assert data.startswith(b"%PDF")
    text = _text(data)
    assert "Invoice PLATFORM-2026-000042" in text
    assert "Müller & Søn GmbH" in text and "Königstraße 5" in text
    assert "¥7,150" in text and "¥2,250" in text  # yen have no minor unit
    assert "Reverse charge" in text and "IBAN IT60" in text
    euro = _text(pdf.render(sample("EUR")))
    assert "€7,150.00" in euro

    # page 1 as an image: A4 at 100 dpi, and not blank
    page = pypdfium2.PdfDocument(data)[0]
    image = page.render(scale=100 / 72).to_pil()
    assert image.size == (827, 1170)
    assert len(image.convert("L").getcolors(maxcolors=256 * 256) or []) > 10
    OUTPUT.mkdir(parents=True, exist_ok=True)
    image.save(OUTPUT / "invoice-page-1.png")
    (OUTPUT / "invoice-sample.pdf").write_bytes(data)


def test_customers_download_their_invoice_pdf_and_the_worker_stores_it(
    app: Flask,
    committed_db: sessionmaker[Session],
    world: dict[str, Any],  # noqa: F811
) -> None:
    subscribe(committed_db, world, "seats", quantity=3)
    with committed_db() as session:
        catalog_data.add_customer(session, "other@example.test")
        session.commit()
    report = billing.run(committed_db, T0 + dt.timedelta(hours=1), now=T0 + dt.timedelta(hours=1))
    (number,) = report.invoices
    storage = app.extensions["mercato.storage"]
    with committed_db() as session:
        invoice = session.query(Invoice).filter_by(number=number).one()
        assert not storage.exists(pdf_key(invoice))
        InvoiceDocuments(storage).handle(
            session, Event(id="x", topic="invoice.issued", payload={"invoice_id": str(invoice.id)})
        )
        assert storage.exists(pdf_key(invoice))
        invoice_id = invoice.id

    owner, other = app.test_client(), app.test_client()
    for browser, email in ((owner, "payer@example.test"), (other, "other@example.test")):
        assert (
            browser.post("/api/v1/session", json={"email": email, "password": "long-enough-pw"}).status_code
            == 200
        )
    response = owner.get(f"/api/v1/invoices/{invoice_id}/pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{number}.pdf"'
    text = _text(response.data)
    assert f"Invoice {number}" in text and "€48.50" in text and "Customer Srl" in text
    page = owner.get(f"/account/invoices/{invoice_id}/pdf")
    assert page.status_code == 200 and page.data == response.data
    assert other.get(f"/api/v1/invoices/{invoice_id}/pdf").status_code == 404
    assert other.get(f"/account/invoices/{invoice_id}/pdf").status_code == 404
