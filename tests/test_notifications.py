"""Notifications end to end: an order's events reach the worker over RabbitMQ, become
notifications for the customer's users, and e-mails at the loopback SMTP server, once,
even when the SMTP server refuses for a while."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.billing import service as billing
from cmw.crypto import Sealer
from cmw.events.models import ProcessedMessage
from cmw.events.worker import Worker
from cmw.mail import SmtpMailer
from cmw.marketplaces.service import platform
from cmw.notifications.consumers import EmailConsumer, NotificationConsumer
from cmw.notifications.models import Notification
from cmw.orders import service as orders
from tests import catalog_data
from tests.helpers import wait_until, worker_running
from tests.servers import SmtpServer
from tests.test_pricing import FLAT, _plan

Factory = sessionmaker[Session]


class CountingMailer:
    """The real SMTP mailer, counting the attempts."""

    def __init__(self, inner: SmtpMailer) -> None:
        self.inner = inner
        self.attempts = 0

    def send(self, message: EmailMessage) -> str:
        self.attempts += 1
        return self.inner.send(message)


@pytest.fixture
def mailer(smtp_server: SmtpServer) -> CountingMailer:
    smtp_server.clear()
    return CountingMailer(
        SmtpMailer(
            # long enough for a loaded machine: a reply that comes late counts as a failure
            # though the server has the message, and it would be sent again
            f"smtp://{smtp_server.host}:{smtp_server.port}",
            "Mercato <no-reply@mercato.example>",
            timeout=15,
        )
    )


@contextmanager
def notifying(
    committed_db: Factory, mailer: Any, base_url: str = "https://shop.example"
) -> Iterator[tuple[Worker, list[Any]]]:
    """A worker turning events into notifications and e-mails, on queues of its own."""
    notifications = NotificationConsumer()
    email = EmailConsumer(
        mailer,
        base_url,
        "Mercato <no-reply@mercato.example>",
        Sealer([Fernet.generate_key().decode()]),
    )
    email.retry_delay = 0.2  # type: ignore[misc]
    with worker_running(committed_db, [notifications, email]) as runner:
        yield runner, [notifications, email]


@pytest.fixture
def worker(committed_db: Factory, mailer: CountingMailer) -> Iterator[tuple[Worker, list[Any]]]:
    with notifying(committed_db, mailer) as running:
        yield running


def _shop_and_order(factory: Factory, colleagues: int = 1) -> dict[str, Any]:
    with factory() as session:
        marketplace = platform(session)
        marketplace.email_sender_name = "Mercato Shop"
        catalog_data.publish_product(session, "notified", [_plan(FLAT)])
        buyer, org = catalog_data.add_customer(session, "n-buyer0@example.test")
        emails = [buyer.email]
        for n in range(colleagues):
            emails.append(
                catalog_data.add_customer(session, f"n-buyer{n + 1}@example.test", organisation=org)[0].email
            )
        placed = orders.place_order(
            session, marketplace, buyer, org, orders.OrderRequest(product="notified", plan="basic")
        )
        session.commit()
        return {"emails": emails, "order_id": placed.id, "customer_id": org.id}


def test_an_order_notifies_every_customer_user_in_app_and_by_email(
    committed_db: Factory, worker: Any, smtp_server: SmtpServer, app: Flask
) -> None:
    made = _shop_and_order(committed_db, colleagues=1)

    def notifications() -> list[Notification]:
        with committed_db() as session:
            return list(session.scalars(sa.select(Notification).order_by(Notification.kind)))

    # order.placed and subscription.activated, for each of the two users.
    found = wait_until(lambda: len(notifications()) == 4 and notifications(), 30, "four notifications")
    assert {n.kind for n in found} == {"order.placed", "subscription.activated"}
    received = smtp_server.wait_for(4, timeout=30)
    assert sorted(r for m in received for r in m.rcpt_tos) == sorted(made["emails"] * 2)
    confirmation = next(m.message for m in received if m.message["Subject"].startswith("Order confirmed"))
    assert confirmation["Subject"] == "Order confirmed: Wiki Server"
    assert confirmation["From"] == "Mercato Shop <no-reply@mercato.example>"
    text = confirmation.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    html = confirmation.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert (
        "Your order for Wiki Server is confirmed" in text
        and f"https://shop.example/account/orders/{made['order_id']}" in text
    )
    assert "<h1" in html and "Wiki Server" in html

    # The notification centre shows them, with the unread count.
    with committed_db() as session:
        user = accounts.find_user(session, made["emails"][0])
        assert user is not None
        _, token = accounts.create_token(session, user, platform(session), name="t", expires_at=None)
        session.commit()
    client, headers = app.test_client(), {"Authorization": f"Bearer {token}"}
    page = client.get("/api/v1/me/notifications", headers=headers).get_json()
    assert page["total"] == 2 and page["unread"] == 2
    assert client.post(
        f"/api/v1/me/notifications/{page['items'][0]['id']}/read", headers=headers
    ).get_json() == {"unread": 1}
    assert client.get("/api/v1/me/notifications?unread=true", headers=headers).get_json()["total"] == 1
    assert client.post("/api/v1/me/notifications/read-all", headers=headers).get_json() == {"unread": 0}


def test_an_smtp_outage_delays_the_email_and_delivers_it_once(
    committed_db: Factory, worker: Any, smtp_server: SmtpServer, mailer: CountingMailer
) -> None:
    _, consumers = worker
    smtp_server.stop()
    try:
        _shop_and_order(committed_db, colleagues=0)
        wait_until(lambda: mailer.attempts >= 3, 30, "the first attempts to fail")
        assert smtp_server.messages == []
    finally:
        smtp_server.start()
    delivered = smtp_server.wait_for(2, timeout=30)  # order.placed and subscription.activated

    def all_applied() -> bool:
        with committed_db() as session:
            return (
                session.scalar(
                    sa.select(sa.func.count())
                    .select_from(ProcessedMessage)
                    .where(ProcessedMessage.consumer == consumers[1].name)
                )
                == 2
            )

    wait_until(all_applied, 30, "both e-mails to be recorded as sent")
    subjects = sorted(m.message["Subject"] for m in smtp_server.messages)
    assert len(delivered) == len(subjects) == 2, subjects
    assert subjects == ["Order confirmed: Wiki Server", "Wiki Server is active"]
    print(f"SMTP outage: {mailer.attempts} attempts, 2 e-mails delivered, 0 lost, 0 duplicated")


def test_an_issued_invoice_is_told_in_app_and_by_email(
    committed_db: Factory, worker: Any, smtp_server: SmtpServer
) -> None:
    made = _shop_and_order(committed_db, colleagues=0)
    report = billing.run(committed_db)
    (number,) = report.invoices
    received = smtp_server.wait_for(3, timeout=30)  # the order's two, and the invoice
    mail = next(m.message for m in received if m.message["Subject"].startswith("Invoice"))
    assert mail["Subject"] == f"Invoice {number}"
    assert mail["To"] == made["emails"][0] or made["emails"][0] in str(mail["To"])
    text = mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert (
        f"Invoice {number} for 10 EUR is issued" in text and "https://shop.example/account/invoices/" in text
    )
    with committed_db() as session:
        kinds = set(session.scalars(sa.select(Notification.kind)))
    assert "invoice.issued" in kinds
