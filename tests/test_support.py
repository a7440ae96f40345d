"""Support tickets: a thread by API and by e-mail reply (the worker's e-mails reach the
loopback SMTP server; the reply comes back through the inbound e-mail endpoint),
attachments checked and served safely, forwarding to an external ticket system by signed
webhook and by e-mail, with its replies threaded back."""

from __future__ import annotations

import dataclasses
import io
import uuid
import zipfile
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cassetto.files import RefusedFile, check_attachment, safe_filename
from cmw.accounts import service as accounts
from cmw.accounts.models import Role, User
from cmw.crypto import Sealer
from cmw.mail import SmtpMailer
from cmw.marketplaces.service import platform
from cmw.orders import service as orders
from cmw.support.consumers import TicketForwarder, TicketMail
from cmw.support.models import Ticket, TicketMessage
from cmw.webhooks.service import Sender
from tests import catalog_data
from tests.helpers import wait_until, worker_running
from tests.servers import HttpsReceiver, SmtpServer
from tests.test_pricing import FLAT, _plan
from tests.test_webhooks import _token, _vendor_user, verify

Factory = sessionmaker[Session]
Headers = Callable[..., dict[str, str]]
SUPPORT = "support@mercato.example"
INBOUND_TOKEN = "inbound-token-for-tests"
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82"
)


@pytest.fixture
def inbound(app: Flask, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The inbound e-mail endpoint switched on, as a mail gateway would call it."""
    config = app.config["MERCATO"]
    monkeypatch.setitem(
        app.config,
        "MERCATO",
        dataclasses.replace(config, inbound_email_token=INBOUND_TOKEN, support_address=SUPPORT),
    )
    return {"Authorization": f"Bearer {INBOUND_TOKEN}", "Content-Type": "message/rfc822"}


@pytest.fixture
def ticket_worker(
    committed_db: Factory, smtp_server: SmtpServer, receiver: HttpsReceiver, app: Flask
) -> Iterator[list[Any]]:
    """A worker sending ticket e-mails to the loopback SMTP server and forwarding tickets."""
    smtp_server.clear()
    mailer = SmtpMailer(f"smtp://{smtp_server.host}:{smtp_server.port}", "Mercato <no-reply@mercato.example>")
    args = (mailer, "https://shop.example", "Mercato <no-reply@mercato.example>", SUPPORT)
    sealer: Sealer = app.extensions["mercato.sealer"]
    consumers: list[Any] = [
        TicketMail(*args),
        TicketForwarder(*args, sealer, Sender(allow_private=True, ca_bundle=receiver.ca_bundle or "")),
    ]
    for consumer in consumers:
        consumer.retry_delay = 0.2
    with worker_running(committed_db, consumers):
        yield consumers


def _mails_to(smtp_server: SmtpServer, address: str, count: int = 1) -> list[EmailMessage]:
    def found() -> list[EmailMessage]:
        return [m.message for m in smtp_server.messages if address in m.rcpt_tos]

    return wait_until(lambda: len(found()) >= count and found(), 30, f"{count} e-mail(s) to {address}")


def _reply(to: EmailMessage, sender: str, text: str, *attachments: tuple[str, bytes, str]) -> bytes:
    reply = EmailMessage()
    reply["From"] = sender
    reply["To"] = str(to["Reply-To"])
    reply["Subject"] = "Re: " + str(to["Subject"])
    reply["Message-ID"] = make_msgid("reply", "mail.example")
    reply["In-Reply-To"] = str(to["Message-ID"])
    reply["References"] = f"{to['References']} {to['Message-ID']}"
    quoted = "\n".join("> " + line for line in to.get_body(("plain",)).get_content().splitlines())  # type: ignore[union-attr]
    reply.set_content(f"{text}\n\nOn Tue, 24 Nov 2026 at 10:00, Mercato Support wrote:\n{quoted}\n")
    for name, data, kind in attachments:
        maintype, subtype = kind.split("/")
        reply.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return reply.as_bytes()


def _shop(factory: Factory) -> dict[str, Any]:
    with factory() as session:
        product = catalog_data.publish_product(session, "supported", [_plan(FLAT)])
        vendor = _vendor_user(session, product.vendor_id, "support-vendor@example.test")
        buyer, org = catalog_data.add_customer(session, "support-buyer@example.test")
        subscription_id = orders.place_order(
            session, platform(session), buyer, org, orders.OrderRequest(product="supported", plan="basic")
        ).subscription_id
        made = {
            "product": product,
            "subscription_id": subscription_id,
            "customer": _token(session, buyer),
            "vendor": _token(session, vendor),
            "org": org,
        }
        session.commit()
        return made


def _messages(factory: Factory, ticket_id: str) -> list[TicketMessage]:
    with factory() as session:
        return list(
            session.scalars(
                sa.select(TicketMessage)
                .where(TicketMessage.ticket_id == uuid.UUID(ticket_id))
                .order_by(TicketMessage.created_at)
            )
        )


def test_a_ticket_thread_by_api_and_by_email_reply(
    committed_db: Factory,
    app: Flask,
    ticket_worker: list[Any],
    smtp_server: SmtpServer,
    inbound: dict[str, str],
) -> None:
    shop = _shop(committed_db)
    client = app.test_client()
    opened = client.post(
        "/api/v1/support/tickets",
        data={
            "subject": "The wiki shows a blank page",
            "body": "Since this morning the front page is blank. Log and screenshot attached.",
            "subscription_id": str(shop["subscription_id"]),
            "files": [(io.BytesIO(PNG), "blank page.png"), (io.BytesIO(b"GET / 500\n"), "app.log")],
        },
        headers=shop["customer"],
        content_type="multipart/form-data",
    )
    assert opened.status_code == 201, opened.get_data(as_text=True)
    ticket = opened.get_json()
    assert ticket["status"] == "open" and ticket["vendor_id"] == str(shop["product"].vendor_id)
    (first,) = ticket["messages"]
    assert first["author_role"] == "customer" and first["via"] == "api"
    assert [(a["filename"], a["content_type"]) for a in first["attachments"]] == [
        ("app.log", "text/plain"),
        ("blank page.png", "image/png"),
    ]

    # The vendor is told by e-mail, threaded, with the reply address of the ticket.
    (to_vendor,) = _mails_to(smtp_server, "support-vendor@example.test")
    assert to_vendor["Subject"] == f"[{ticket['ref']}] The wiki shows a blank page"
    assert str(to_vendor["Reply-To"]).startswith("support+t-") and str(to_vendor["Reply-To"]).endswith(
        "@mercato.example"
    )
    assert to_vendor["References"] == f"<ticket.{ticket['id']}@mercato.example>"
    text = to_vendor.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Since this morning the front page is blank." in text and "blank page.png" in text

    # The vendor answers through the API, with a PDF; the customer hears of it.
    answered = client.post(
        f"/api/v1/support/tickets/{ticket['id']}/messages",
        data={
            "body": "Fixed a full disk; please check.",
            "files": [(io.BytesIO(b"%PDF-1.4\n%%EOF\n"), "steps.pdf")],
        },
        headers=shop["vendor"],
        content_type="multipart/form-data",
    )
    assert answered.status_code == 201 and answered.get_json()["author_role"] == "vendor"
    assert client.get(f"/api/v1/support/tickets/{ticket['id']}", headers=shop["vendor"]).get_json()[
        "status"
    ] == ("answered")
    (to_customer,) = _mails_to(smtp_server, "support-buyer@example.test")
    assert to_customer["Subject"] == f"Re: [{ticket['ref']}] The wiki shows a blank page"

    # The customer answers by e-mail: threaded by the reply address, quotes cut, a safe
    # attachment kept and a program refused with the reason.
    raw = _reply(
        to_customer,
        "Support Buyer <support-buyer@example.test>",
        "Thanks, it works again.",
        ("after.log", b"GET / 200\n", "text/plain"),
        ("fix.exe", b"MZ\x90\x00" + b"\x00" * 64, "application/octet-stream"),
    )
    received = client.post("/api/v1/support/inbound-email", data=raw, headers=inbound)
    assert received.status_code == 200, received.get_data(as_text=True)
    body = received.get_json()
    assert body["ticket_id"] == ticket["id"] and body["duplicate"] is False
    assert body["refused"] == [
        "fix.exe: .exe files are not accepted; accepted are images (PNG, JPEG, GIF, WebP), PDF, text and log "
        "files, and ZIP archives"
    ]
    thread = _messages(committed_db, ticket["id"])
    assert [(m.author_role, m.via) for m in thread] == [
        ("customer", "api"),
        ("vendor", "api"),
        ("customer", "email"),
    ]
    assert thread[2].body.startswith("Thanks, it works again.\n\n[Attachments not accepted: fix.exe")
    assert "wrote:" not in thread[2].body and "Fixed a full disk" not in thread[2].body
    assert [a.filename for a in thread[2].attachments] == ["after.log"]
    _mails_to(smtp_server, "support-vendor@example.test", 2)  # the vendor hears of the reply

    # The same e-mail delivered again is added once.
    again = client.post("/api/v1/support/inbound-email", data=raw, headers=inbound).get_json()
    assert again["duplicate"] is True and len(_messages(committed_db, ticket["id"])) == 3
    # Someone outside the ticket, or without the gateway's token, adds nothing.
    stranger = _reply(to_customer, "Mallory <mallory@example.test>", "Let me in")
    refused = client.post("/api/v1/support/inbound-email", data=stranger, headers=inbound)
    assert refused.status_code == 422
    assert (
        refused.get_json()["detail"] == f"mallory@example.test does not take part in ticket {ticket['ref']}"
    )
    wrong = client.post(
        "/api/v1/support/inbound-email", data=raw, headers={**inbound, "Authorization": "Bearer no"}
    )
    assert wrong.status_code == 401
    assert len(_messages(committed_db, ticket["id"])) == 3

    # Attachments are served to the ticket's people only, as downloads nothing renders.
    attachment = next(a for a in first["attachments"] if a["filename"] == "blank page.png")
    download = client.get(attachment["url"], headers=shop["customer"])
    assert download.status_code == 200 and download.data == PNG
    assert download.headers["Content-Disposition"] == "attachment; filename*=UTF-8''blank%20page.png"
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    assert download.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    with committed_db() as session:
        other, _ = catalog_data.add_customer(session, "support-other@example.test")
        outsider = _token(session, other)
        session.commit()
    assert client.get(attachment["url"], headers=outsider).status_code == 404
    assert client.get(f"/api/v1/support/tickets/{ticket['id']}", headers=outsider).status_code == 404
    assert client.get("/api/v1/support/tickets", headers=outsider).get_json()["total"] == 0
    listed = client.get("/api/v1/support/tickets?status=open", headers=shop["vendor"]).get_json()
    assert [t["ref"] for t in listed["items"]] == [ticket["ref"]]
    closed = client.post(f"/api/v1/support/tickets/{ticket['id']}/close", headers=shop["customer"]).get_json()
    assert closed["status"] == "closed" and closed["closed_at"]


def test_dangerous_or_oversized_attachments_are_refused_and_nothing_is_written(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers, db_session: Session
) -> None:
    headers = token_for(make_user(Role.CUSTOMER))

    def post(name: str, data: bytes) -> Any:
        return client.post(
            "/api/v1/support/tickets",
            data={"subject": "Help", "body": "See attached", "files": [(io.BytesIO(data), name)]},
            headers=headers,
            content_type="multipart/form-data",
        )

    big = post("dump.log", b"x" * (10 * 1024 * 1024 + 1))
    assert big.status_code == 413
    assert big.get_json()["errors"] == [
        {
            "location": "files",
            "field": "files",
            "message": "dump.log is 10.0 MB; an attachment may be at most 10 MB",
        }
    ]
    program = post("notes.txt", b"\x7fELF\x02\x01\x01" + b"\x00" * 32)
    assert program.status_code == 422
    assert program.get_json()["errors"][0]["message"].startswith("notes.txt is a Linux program")
    page = post("page.html", b"<html><script>alert(1)</script></html>")
    assert page.status_code == 422 and ".html files are not accepted" in page.get_json()["detail"]
    unknown = client.post(
        "/api/v1/support/tickets",
        data={"subject": "Help", "body": "x", "subscription_id": str(uuid.uuid4())},
        headers=headers,
        content_type="multipart/form-data",
    )
    assert unknown.status_code == 422
    assert unknown.get_json()["errors"] == [
        {"location": "form", "field": "subscription_id", "message": "not one of your subscriptions"}
    ]
    assert db_session.scalar(sa.select(sa.func.count()).select_from(Ticket)) == 0


def test_tickets_are_forwarded_to_an_external_desk_whose_email_replies_come_back(
    committed_db: Factory,
    app: Flask,
    ticket_worker: list[Any],
    smtp_server: SmtpServer,
    receiver: HttpsReceiver,
    inbound: dict[str, str],
) -> None:
    with committed_db() as session:
        admin = accounts.create_user(
            session, email="desk-admin@example.test", name="Admin", password="long-enough-pw"
        )
        accounts.grant(session, admin, platform(session), Role.ADMIN)
        buyer, _ = catalog_data.add_customer(session, "desk-buyer@example.test")
        admin_headers, customer = _token(session, admin), _token(session, buyer)
        session.commit()
    client = app.test_client()
    settings = client.put(
        "/api/v1/admin/support/forwarding",
        json={"forward_url": f"{receiver.url}/desk", "forward_email": "desk@helpdesk.example"},
        headers=admin_headers,
    ).get_json()
    secret = settings["secret"]
    assert secret.startswith("whsec_") and settings["forward_email"] == "desk@helpdesk.example"
    assert "secret" not in client.get("/api/v1/admin/support/forwarding", headers=admin_headers).get_json()
    refused = client.put(
        "/api/v1/admin/support/forwarding", json={"forward_url": "http://x"}, headers=admin_headers
    )
    assert refused.status_code == 422 and refused.get_json()["errors"][0]["field"] == "forward_url"

    receiver.answer(503)  # the desk is briefly down: the forward is retried
    ticket = client.post(
        "/api/v1/support/tickets",
        data={"subject": "Invoice address", "body": "Please change our invoice address."},
        headers=customer,
        content_type="multipart/form-data",
    ).get_json()
    assert ticket["vendor_id"] is None  # about nothing bought: the marketplace's support
    forwarded = receiver.wait_for(2, timeout=30)
    assert [r.path for r in forwarded] == ["/desk", "/desk"]
    document = verify(secret, forwarded[-1])
    assert document["ticket"]["ref"] == ticket["ref"]
    assert document["message"]["body"] == "Please change our invoice address."
    assert document["reply"]["email"].startswith("support+t-")
    (desk_mail,) = _mails_to(smtp_server, "desk@helpdesk.example")
    _mails_to(smtp_server, "desk-admin@example.test")  # the admins are told as well

    # The desk answers by e-mail: it joins the thread as the external system's answer.
    answer = _reply(desk_mail, "Helpdesk <desk@helpdesk.example>", "Done: the address is changed.")
    assert client.post("/api/v1/support/inbound-email", data=answer, headers=inbound).status_code == 200
    thread = _messages(committed_db, ticket["id"])
    assert [(m.author_role, m.via, m.body) for m in thread][-1] == (
        "external",
        "email",
        "Done: the address is changed.",
    )
    (to_customer,) = _mails_to(smtp_server, "desk-buyer@example.test")
    assert "Done: the address is changed." in to_customer.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert len(receiver.requests) == 2  # the desk's own answer is not sent back to it


def _zip(*names: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in names:
            archive.writestr(name, b"data")
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("shot.png", PNG, "image/png"),
        ("scan.pdf", b"%PDF-1.7\n", "application/pdf"),
        ("app.log", "Grüße\n".encode(), "text/plain"),
        ("old.log", "caf\xe9 ok\n".encode("latin-1"), "text/plain"),
        ("logs.zip", _zip("a.log", "b/c.txt"), "application/zip"),
        ("access.log", b"GET /?q=<script>alert(1)</script> 200\n", "text/plain"),
    ],
)
def test_attachments_people_send_to_support_are_accepted(name: str, data: bytes, kind: str) -> None:
    assert check_attachment(name, data).content_type == kind


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("setup.exe", b"hello", "setup.exe: .exe files are not accepted"),
        ("readme.txt", b"MZ\x90\x00", "readme.txt is a Windows program"),
        ("run.txt", b"#!/bin/sh\nrm -rf /\n", "run.txt is a script"),
        ("logo.svg", b"<svg/>", "logo.svg: .svg files are not accepted"),
        ("logs.zip", _zip("a.log", "payload.js"), "the archive holds payload.js"),
        ("broken.zip", b"PK\x03\x04broken", "the ZIP archive is damaged"),
        ("blob.dat", bytes(range(256)) * 4, "blob.dat is of a kind that is not accepted"),
        ("empty.txt", b"", "empty.txt is empty"),
    ],
)
def test_dangerous_attachments_are_refused_with_the_reason(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(RefusedFile) as refused:
        check_attachment(name, data)
    assert refused.value.reason.startswith(reason)


def test_attachment_names_are_made_safe() -> None:
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\Users\\me\\report.pdf") == "report.pdf"
    assert safe_filename('a"b<c>\x00\x1b.txt') == "abc.txt"
    assert safe_filename("...") == "attachment"
    assert len(safe_filename("x" * 300 + ".log")) == 150 and safe_filename("x" * 300 + ".log").endswith(
        ".log"
    )


def test_an_mta_pipes_an_email_that_names_no_ticket_and_it_bounces(app: Flask) -> None:
    stray = EmailMessage()
    stray["From"] = "someone@example.test"
    stray["To"] = SUPPORT
    stray["Subject"] = "Hello"
    stray.set_content("Is anyone there?")
    result = app.test_cli_runner().invoke(
        args=["mercato", "support", "inbound-email"], input=stray.as_bytes()
    )
    assert result.exit_code == 67
    assert "the e-mail names no ticket" in result.output
