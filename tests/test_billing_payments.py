"""Payments and credit notes: never more than owed or left to credit, gapless credit note
numbers, issued invoices that never change, and the automatic credit for a machine that
failed without ever running."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import Role
from cmw.billing import service as billing
from cmw.billing.documents import FailedDeployments
from cmw.billing.models import CreditNote, Invoice, InvoiceLine, InvoiceStatus
from cmw.catalog.models import Product
from cmw.events.consumer import Event
from cmw.events.models import OutboxEvent
from cmw.marketplaces.service import platform
from cmw.orders.models import Subscription, SubscriptionChange
from deployer.models import Deployment, DeploymentState
from tests import catalog_data
from tests.test_billing import T0, subscribe, world  # noqa: F401  (the fixture)

Factory = sessionmaker[Session]


def _admin(app: Flask, factory: Factory) -> tuple[FlaskClient, dict[str, str]]:
    with factory() as session:
        admin = catalog_data.add_customer(session, "money-admin@example.test")[0]
        accounts.grant(session, admin, platform(session), Role.ADMIN)
        session.commit()
    browser = app.test_client()
    signed = browser.post(
        "/api/v1/session", json={"email": "money-admin@example.test", "password": "long-enough-pw"}
    )
    assert signed.status_code == 200
    return browser, {"X-CSRF-Token": browser.get("/api/v1/me").get_json()["csrf_token"]}


def _invoice(factory: Factory, world: dict[str, Any], at: dt.datetime = T0) -> str:  # noqa: F811
    subscribe(factory, world, "seats", quantity=3, at=at)
    (number,) = billing.run(factory, at + dt.timedelta(minutes=5), now=at + dt.timedelta(minutes=5)).invoices
    with factory() as session:
        return str(session.scalar(sa.select(Invoice.id).where(Invoice.number == number)))


def _errors(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.get_data(as_text=True)
    return {e["field"]: e["message"] for e in response.get_json()["errors"]}


def test_payments_settle_an_invoice_and_never_exceed_it(
    app: Flask,
    committed_db: Factory,
    world: dict[str, Any],  # noqa: F811
) -> None:
    browser, headers = _admin(app, committed_db)
    invoice_id = _invoice(committed_db, world)  # 48.50 EUR
    url = f"/api/v1/admin/invoices/{invoice_id}/payments"
    assert "payment is larger" in _errors(browser.post(url, json={"amount": "50"}, headers=headers))["amount"]
    assert "minor unit" in _errors(browser.post(url, json={"amount": "0.001"}, headers=headers))["amount"]
    first = browser.post(url, json={"amount": "20", "reference": "BANK-1"}, headers=headers)
    assert first.status_code == 201 and first.get_json()["amount"] == "20"
    assert (
        "recorded already"
        in _errors(browser.post(url, json={"amount": "1", "reference": "BANK-1"}, headers=headers))[
            "reference"
        ]
    )
    detail = browser.get(f"/api/v1/invoices/{invoice_id}").get_json()
    assert detail["outstanding"] == "28.5" and detail["status"] == "issued"
    assert (
        browser.post(url, json={"amount": "28.50", "reference": "BANK-2"}, headers=headers).status_code == 201
    )
    detail = browser.get(f"/api/v1/invoices/{invoice_id}").get_json()
    assert detail["status"] == "paid" and detail["outstanding"] == "0"
    assert [p["amount"] for p in detail["payments"]] == ["20", "28.5"]
    assert "owes 0 EUR" in _errors(browser.post(url, json={"amount": "1"}, headers=headers))["amount"]
    with committed_db() as session:
        assert session.scalar(sa.select(sa.func.count()).where(OutboxEvent.topic == "invoice.paid")) == 1

    # an issued invoice never changes
    refused = browser.patch(
        f"/api/v1/admin/invoices/{invoice_id}", json={"buyer": {"name": "Someone"}}, headers=headers
    )
    assert refused.status_code == 422 and "cannot change" in refused.get_json()["detail"]
    assert browser.get(f"/api/v1/invoices/{invoice_id}").get_json()["buyer"]["legal_name"] == "Customer Srl"


def test_credit_notes_are_numbered_and_never_exceed_the_invoice(
    app: Flask,
    committed_db: Factory,
    world: dict[str, Any],  # noqa: F811
) -> None:
    browser, headers = _admin(app, committed_db)
    invoice_id = _invoice(committed_db, world)
    url = f"/api/v1/admin/invoices/{invoice_id}/credit-notes"
    assert (
        "48.5 EUR more"
        in _errors(browser.post(url, json={"amount": "100", "reason": "x"}, headers=headers))["amount"]
    )
    assert _errors(browser.post(url, json={"amount": "10"}, headers=headers))["reason"]
    first = browser.post(url, json={"amount": "10", "reason": "Goodwill"}, headers=headers).get_json()
    assert first["number"] == "PLATFORM-CN-2026-000001" and first["total"] == "10"
    second = browser.post(url, json={"amount": "38.50", "reason": "Cancelled"}, headers=headers).get_json()
    assert second["number"] == "PLATFORM-CN-2026-000002"
    detail = browser.get(f"/api/v1/invoices/{invoice_id}").get_json()
    assert detail["status"] == "void" and detail["outstanding"] == "0"  # credited in full, never paid
    assert (
        "0 EUR more"
        in _errors(browser.post(url, json={"amount": "1", "reason": "x"}, headers=headers))["amount"]
    )
    notes = browser.get("/api/v1/credit-notes").get_json()
    assert [n["number"] for n in notes["items"]] == ["PLATFORM-CN-2026-000002", "PLATFORM-CN-2026-000001"]


def test_a_machine_that_never_ran_is_credited_and_not_billed_again(
    committed_db: Factory,
    world: dict[str, Any],  # noqa: F811
) -> None:
    _invoice(committed_db, world)
    with committed_db() as session:
        subscription = session.scalars(sa.select(Subscription)).one()
        product = session.get(Product, subscription.product_id)
        assert product is not None
        session.add(
            Deployment(
                subscription_id=subscription.id, marketplace_id=subscription.marketplace_id,
                customer_id=subscription.customer_id, product_id=product.id, vendor_id=product.vendor_id,
                product_type="vm_app", spec={}, state=DeploymentState.FAILED, active=False,
                last_error="the image does not exist",
            )
        )  # fmt: skip
        session.commit()
        payload = {"subscription_id": str(subscription.id)}
        FailedDeployments().handle(session, Event(id="e1", topic="deployment.failed", payload=payload))
        session.commit()
        (note,) = session.scalars(sa.select(CreditNote)).all()
        assert note.total == 48.5 and note.subscription_id == subscription.id
        invoice = session.get(Invoice, note.invoice_id)
        assert invoice is not None and invoice.status is InvoiceStatus.VOID
        # told to the customer
        told = session.scalars(sa.select(OutboxEvent).where(OutboxEvent.topic == "credit_note.issued")).one()
        assert "could not be set up" in told.payload["reason"]
        # the same event again credits nothing more
        FailedDeployments().handle(session, Event(id="e2", topic="deployment.failed", payload=payload))
        session.commit()
        assert session.scalar(sa.select(sa.func.count()).select_from(CreditNote)) == 1
    # next month: nothing billed for a machine that never ran
    march = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert billing.run(committed_db, march, now=march).invoices == []


def test_dunning_reminds_then_puts_past_due_then_cancels(
    committed_db: Factory,
    world: dict[str, Any],  # noqa: F811
) -> None:
    from cmw.billing import dunning, payments
    from cmw.orders.models import SubscriptionStatus

    invoice_id = _invoice(committed_db, world)
    with committed_db() as session:
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None and invoice.due_at is not None
        due = invoice.due_at

    def status() -> SubscriptionStatus:
        with committed_db() as session:
            return session.scalars(sa.select(Subscription)).one().status

    def topics() -> list[str]:
        with committed_db() as session:
            return [
                e.topic
                for e in session.scalars(sa.select(OutboxEvent).order_by(OutboxEvent.seq))
                if e.topic in ("invoice.overdue", "subscription.past_due", "subscription.cancelled")
            ]

    assert dunning.run(committed_db, due + dt.timedelta(hours=12))["reminders"] == 0
    assert dunning.run(committed_db, due + dt.timedelta(days=1, hours=1))["reminders"] == 1
    assert dunning.run(committed_db, due + dt.timedelta(days=1, hours=2))["reminders"] == 0  # once
    assert status() is SubscriptionStatus.ACTIVE
    assert dunning.run(committed_db, due + dt.timedelta(days=3, hours=1))["past_due"] == 1
    assert status() is SubscriptionStatus.PAST_DUE
    assert topics() == ["invoice.overdue", "subscription.past_due"]

    # paid in full: active again, and no more dunning
    with committed_db() as session:
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None
        payments.record_payment(session, invoice, invoice.total)
        session.commit()
    assert status() is SubscriptionStatus.ACTIVE
    assert dunning.run(committed_db, due + dt.timedelta(days=40))["invoices"] == 0

    # the next month's invoice is never paid: a month late, the subscription is cancelled
    feb = dt.datetime(2026, 2, 15, 10, 5, tzinfo=dt.UTC)
    (number,) = billing.run(committed_db, feb, now=feb).invoices
    with committed_db() as session:
        second_due = session.scalar(sa.select(Invoice.due_at).where(Invoice.number == number))
        assert second_due is not None
    late = dunning.run(committed_db, second_due + dt.timedelta(days=31))
    assert late == {"invoices": 1, "reminders": 1, "past_due": 0, "suspended": 0, "cancelled": 1}
    assert status() is SubscriptionStatus.CANCELLED
    assert topics()[-2:] == ["invoice.overdue", "subscription.cancelled"]


def test_dunning_suspends_the_machine_and_payment_resumes_it(
    app: Flask,
    committed_db: Factory,
    world: dict[str, Any],  # noqa: F811
) -> None:
    from cmw.billing import dunning, payments
    from cmw.notifications.consumers import NotificationConsumer
    from cmw.notifications.models import Notification
    from cmw.orders.models import SubscriptionStatus

    browser, headers = _admin(app, committed_db)
    settings = "/api/v1/admin/billing-settings"
    # the steps keep their order: past due, then suspended, then cancelled
    refused = _errors(
        browser.patch(settings, json={"past_due_after_days": 10, "suspend_after_days": 5}, headers=headers)
    )
    assert "past due, then suspends, then cancels" in refused["suspend_after_days"]
    assert browser.get(settings).get_json()["suspend_after_days"] == 14  # nothing changed
    changed = browser.patch(
        settings,
        json={
            "reminder_days": [5, 2, 2],
            "past_due_after_days": 3,
            "suspend_after_days": 7,
            "cancel_after_days": 40,
        },
        headers=headers,
    )
    assert changed.status_code == 200, changed.get_data(as_text=True)
    assert changed.get_json()["reminder_days"] == [2, 5] and changed.get_json()["suspend_after_days"] == 7

    invoice_id = _invoice(committed_db, world)
    with committed_db() as session:
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None and invoice.due_at is not None
        due = invoice.due_at

    def subscription() -> Subscription:
        with committed_db() as session:
            return session.scalars(sa.select(Subscription)).one()

    def events(topic: str) -> list[OutboxEvent]:
        with committed_db() as session:
            return list(session.scalars(sa.select(OutboxEvent).where(OutboxEvent.topic == topic)))

    assert dunning.run(committed_db, due + dt.timedelta(days=3, hours=1))["past_due"] == 1
    assert dunning.run(committed_db, due + dt.timedelta(days=6))["suspended"] == 0
    assert subscription().suspended_at is None
    late = due + dt.timedelta(days=7, hours=1)
    assert dunning.run(committed_db, late)["suspended"] == 1
    assert dunning.run(committed_db, late + dt.timedelta(hours=1))["suspended"] == 0  # once
    suspended = subscription()
    assert suspended.status is SubscriptionStatus.PAST_DUE and suspended.suspended_at == late
    (told,) = events("subscription.suspended")
    assert told.payload["subscription_id"] == str(suspended.id) and "is unpaid" in told.payload["reason"]
    # the customer is told why their machine stopped
    with committed_db() as session:
        NotificationConsumer().handle(
            session,
            Event(
                id=str(told.id), topic=told.topic, payload=told.payload, marketplace_id=told.marketplace_id
            ),
        )
        session.commit()
        notice = session.scalars(
            sa.select(Notification).where(Notification.kind == "subscription.suspended")
        ).one()
        assert "stopped because invoice" in notice.body and "pay the invoice" in notice.body

    with committed_db() as session:
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None
        payments.record_payment(session, invoice, invoice.total)
        session.commit()
    resumed = subscription()
    assert resumed.status is SubscriptionStatus.ACTIVE and resumed.suspended_at is None
    assert [e.payload["subscription_id"] for e in events("subscription.resumed")] == [str(resumed.id)]
    with committed_db() as session:
        kinds = [
            c.kind for c in session.scalars(sa.select(SubscriptionChange).order_by(SubscriptionChange.at))
        ]
    assert kinds[-3:] == ["suspended", "paid_up", "resumed"]

    # the next invoice is never paid but forgiven (credited in full): the machine runs again
    next_period = resumed.current_period_end + dt.timedelta(minutes=5)
    (number,) = billing.run(committed_db, next_period, now=next_period).invoices
    with committed_db() as session:
        second = session.scalars(sa.select(Invoice).where(Invoice.number == number)).one()
        assert second.due_at is not None
        second_id, second_due = second.id, second.due_at
    assert dunning.run(committed_db, second_due + dt.timedelta(days=8))["suspended"] == 1
    assert subscription().suspended_at is not None
    with committed_db() as session:
        second = session.get(Invoice, second_id)
        assert second is not None
        payments.issue_credit_note(session, second, second.subtotal, "Goodwill: the outage last week")
        session.commit()
        assert session.get(Invoice, second_id).status is InvoiceStatus.VOID  # type: ignore[union-attr]
    forgiven = subscription()
    assert forgiven.status is SubscriptionStatus.ACTIVE and forgiven.suspended_at is None
    assert len(events("subscription.resumed")) == 2


def test_coupons_are_invoice_lines_within_their_limits(
    app: Flask,
    committed_db: Factory,
    world: dict[str, Any],  # noqa: F811
) -> None:
    browser, headers = _admin(app, committed_db)
    made = [
        browser.post("/api/v1/admin/coupons", json=body, headers=headers)
        for body in (
            {"code": "welcome20", "kind": "percent", "percent": "20", "plan_codes": ["seats"]},
            {"code": "FIVEOFF", "kind": "fixed", "amount": "5", "currency": "EUR",
             "duration": "repeating", "periods": 2},
            {"code": "ONCEONLY", "kind": "percent", "percent": "10", "duration": "forever",
             "max_redemptions": 1},
            {"code": "OLD", "kind": "percent", "percent": "50", "expires_at": "2020-01-01T00:00:00Z"},
        )
    ]  # fmt: skip
    assert [m.status_code for m in made] == [201, 201, 201, 201], [m.get_json() for m in made]
    assert made[0].get_json()["code"] == "WELCOME20"
    for body, field in (
        ({"code": "BAD", "kind": "percent", "percent": "120"}, "percent"),
        ({"code": "BAD", "kind": "fixed", "amount": "5", "currency": "EURO"}, "currency"),
        ({"code": "BAD", "kind": "percent", "percent": "5", "duration": "repeating"}, "periods"),
        ({"code": "welcome20", "kind": "percent", "percent": "5"}, "code"),
    ):
        assert field in _errors(browser.post("/api/v1/admin/coupons", json=body, headers=headers)), body

    first = subscribe(committed_db, world, "seats", quantity=3)
    second = subscribe(committed_db, world, "usage")
    customer = app.test_client()
    assert (
        customer.post(
            "/api/v1/session", json={"email": "payer@example.test", "password": "long-enough-pw"}
        ).status_code
        == 200
    )
    csrf = {"X-CSRF-Token": customer.get("/api/v1/me").get_json()["csrf_token"]}

    def redeem(subscription: Any, code: str) -> Any:
        return customer.post(
            f"/api/v1/subscriptions/{subscription}/coupon", json={"code": code}, headers=csrf
        )

    assert "expired" in _errors(redeem(first, "old"))["code"]
    assert "for the plans seats" in _errors(redeem(second, "welcome20"))["code"]
    assert redeem(first, "welcome20").status_code == 201
    assert "has a coupon already" in _errors(redeem(first, "FIVEOFF"))["code"]
    assert redeem(second, "ONCEONLY").status_code == 201
    third = subscribe(committed_db, world, "seats")
    assert "used as often" in _errors(redeem(third, "ONCEONLY"))["code"]
    assert redeem(third, "FIVEOFF").status_code == 201

    billing.run(committed_db, T0 + dt.timedelta(hours=1), now=T0 + dt.timedelta(hours=1))
    feb = dt.datetime(2026, 2, 15, 10, 30, tzinfo=dt.UTC)
    billing.run(committed_db, feb, now=feb)
    march = dt.datetime(2026, 3, 15, 10, 30, tzinfo=dt.UTC)
    billing.run(committed_db, march, now=march)
    with committed_db() as session:
        discounts = session.execute(
            sa.select(InvoiceLine.subscription_id, InvoiceLine.period_start, InvoiceLine.amount)
            .where(InvoiceLine.kind == "discount")
            .order_by(InvoiceLine.period_start, InvoiceLine.amount)
        ).all()
    months = {T0.month: "jan", 2: "feb", 3: "mar"}
    found = sorted(
        (months[p.month], {first: "first", second: "second", third: "third"}[s], f"{a:.2f}")
        for s, p, a in discounts
    )
    assert found == sorted([
        ("jan", "first", "-4.70"),  # 20% of 10 + 3 x 4.50, once
        # 10% of 10, for ever
        ("jan", "second", "-1.00"), ("feb", "second", "-1.00"), ("mar", "second", "-1.00"),
        ("jan", "third", "-5.00"), ("feb", "third", "-5.00"),  # 5 off 14.50, two periods
    ])  # fmt: skip
