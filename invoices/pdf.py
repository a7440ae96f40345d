"""Invoice and credit note PDFs (ReportLab): the marketplace's name and colour, seller and buyer, the lines
with their periods and quantities, the tax summary with the rule applied, the totals and
the payment terms. Unicode throughout: DejaVu Sans where the system has it (Debian's
fonts-dejavu-core), else the Bitstream Vera fonts ReportLab ships.

It renders a :class:`invoices.model.Document` (the worker after issue, or the web process
on demand).
"""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path
from xml.sax.saxutils import escape

import reportlab
from babel.numbers import format_currency, format_decimal
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from invoices.model import Document, Party

_DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
_VERA = Path(reportlab.__file__).parent / "fonts"
FONT, BOLD = "MercatoSans", "MercatoSans-Bold"


def _register_fonts() -> None:
    if FONT in pdfmetrics.getRegisteredFontNames():
        return
    regular, bold = _DEJAVU / "DejaVuSans.ttf", _DEJAVU / "DejaVuSans-Bold.ttf"
    if not (regular.exists() and bold.exists()):
        regular, bold = _VERA / "Vera.ttf", _VERA / "VeraBd.ttf"
    pdfmetrics.registerFont(TTFont(FONT, str(regular)))
    pdfmetrics.registerFont(TTFont(BOLD, str(bold)))


def money(amount: Decimal, currency: str) -> str:
    return str(format_currency(amount, currency, locale="en_IE"))


def _party(party: Party, heading: str, styles: dict[str, ParagraphStyle]) -> list[Paragraph]:
    """One paragraph per party (a paragraph each line would cost more than the rest)."""
    lines = [f"<font name='{BOLD}'>{escape(party.name)}</font>", *(escape(a) for a in party.address)]
    if party.country:
        lines.append(escape(party.country))
    if party.vat_number:
        lines.append(f"VAT {escape(party.vat_number)}")
    if party.email:
        lines.append(escape(party.email))
    return [Paragraph(heading, styles["label"]), Paragraph("<br/>".join(lines), styles["body"])]


def render(document: Document) -> bytes:
    """The document as PDF bytes (A4)."""
    _register_fonts()
    colour = colors.HexColor(document.colour)
    styles = {
        "body": ParagraphStyle("body", fontName=FONT, fontSize=9, leading=12),
        "strong": ParagraphStyle("strong", fontName=BOLD, fontSize=9.5, leading=12),
        "label": ParagraphStyle(
            "label", fontName=FONT, fontSize=7.5, leading=10, textColor=colors.HexColor("#555555")
        ),
        "title": ParagraphStyle("title", fontName=BOLD, fontSize=20, leading=24, textColor=colour),
        "brand": ParagraphStyle("brand", fontName=BOLD, fontSize=12, leading=15),
        "right": ParagraphStyle("right", fontName=FONT, fontSize=9, leading=12, alignment=TA_RIGHT),
        "right_strong": ParagraphStyle(
            "right_strong", fontName=BOLD, fontSize=10, leading=13, alignment=TA_RIGHT
        ),
        "small": ParagraphStyle(
            "small", fontName=FONT, fontSize=7.5, leading=10, textColor=colors.HexColor("#444444")
        ),
    }
    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=18 * mm,
        title=f"{document.title} {document.number}",
        author=document.seller.name,
        subject=f"{document.title} {document.number} from {document.marketplace}",
    )
    width = A4[0] - 36 * mm
    story: list[object] = []
    story.append(Paragraph(escape(document.marketplace), styles["brand"]))
    story.append(Paragraph(f"{escape(document.title)} {escape(document.number)}", styles["title"]))
    facts = [f"Issued {document.issued_at:%d %B %Y}"]
    if document.due_at:
        facts.append(f"due {document.due_at:%d %B %Y}")
    if document.reference:
        facts.append(f"corrects invoice {escape(document.reference)}")
    story.append(Paragraph(", ".join(facts), styles["body"]))
    story.append(Spacer(1, 6 * mm))
    parties = Table(
        [[_party(document.seller, "FROM", styles), _party(document.buyer, "BILLED TO", styles)]],
        colWidths=[width / 2, width / 2],
    )
    parties.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
    story.append(parties)
    story.append(Spacer(1, 8 * mm))

    # plain strings where nothing wraps (a Paragraph per cell costs most of the rendering)
    rows: list[list[object]] = [["DESCRIPTION", "PERIOD", "QUANTITY", "UNIT PRICE", "AMOUNT"]]
    for line in document.lines:
        quantity = format_decimal(line.quantity.normalize(), locale="en_IE") + (
            f" {line.unit}" if line.unit else ""
        )
        rows.append(
            [
                Paragraph(escape(line.description), styles["body"]),
                line.period,
                quantity,
                money(line.unit_price, document.currency) if line.unit_price is not None else "",
                money(line.amount, document.currency),
            ]
        )
    lines = Table(
        rows, colWidths=[width * 0.34, width * 0.28, width * 0.11, width * 0.12, width * 0.15], repeatRows=1
    )
    lines.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, -1), FONT),
                ("FONTSIZE", (0, 1), (-1, -1), 8.5),
                ("FONTSIZE", (0, 0), (-1, 0), 7),
                ("TEXTCOLOR", (0, 0), (-1, 0), colors.HexColor("#555555")),
                ("ALIGN", (-1, 0), (-1, -1), "RIGHT"),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, 0), 0.8, colour),
                ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.HexColor("#cccccc")),
                ("LEFTPADDING", (0, 0), (-1, -1), 2),
                ("RIGHTPADDING", (0, 0), (-1, -1), 2),
            ]
        )
    )
    story.append(lines)
    story.append(Spacer(1, 5 * mm))

    rate = format_decimal(document.tax_rate.normalize(), locale="en_IE")

    totals = Table(
        [
            ["", "Subtotal", money(document.subtotal, document.currency)],
            ["", f"Tax ({rate}%)", money(document.tax_total, document.currency)],
            ["", "Total", money(document.total, document.currency)],
        ],
        colWidths=[width * 0.56, width * 0.24, width * 0.20],
    )
    totals.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, -1), FONT),
                ("FONTSIZE", (0, 0), (-1, -1), 9),
                ("FONTNAME", (0, 2), (-1, 2), BOLD),
                ("FONTSIZE", (0, 2), (-1, 2), 10),
                ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
                ("LINEABOVE", (1, 2), (-1, 2), 0.8, colour),
            ]
        )
    )
    story.append(totals)
    story.append(Spacer(1, 6 * mm))
    story.append(Paragraph("TAX", styles["label"]))
    story.append(
        Paragraph(
            f"{escape(document.tax_rule)}. Taxable amount {money(document.subtotal, document.currency)},"
            f" tax {money(document.tax_total, document.currency)}.",
            styles["body"],
        )
    )
    if document.due_at or document.payment_instructions:
        story.append(Spacer(1, 4 * mm))
        story.append(Paragraph("PAYMENT", styles["label"]))
        terms = f"Please pay {money(document.total, document.currency)}"
        terms += f" by {document.due_at:%d %B %Y}." if document.due_at else "."
        story.append(Paragraph(terms, styles["body"]))
        if document.payment_instructions:
            story.append(Paragraph(escape(document.payment_instructions), styles["body"]))
    if document.footer:
        story.append(Spacer(1, 8 * mm))
        story.append(Paragraph(escape(document.footer), styles["small"]))
    doc.build(story)
    return out.getvalue()
