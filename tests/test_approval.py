"""Orders of products that require approval: they wait for the auditor (the vendor on the
platform marketplace, the reseller on a reseller marketplace), who approves (the order
proceeds to provisioning, or the change is made) or rejects with a reason. Customer and
auditor are told, in the app and by e-mail (a worker and the loopback SMTP server). A
reseller's order for its customer needs no approval."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from decimal import Decimal

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts.models import Role, User
from cmw.catalog.models import ComponentKind, Product, ProductVersion
from cmw.catalog.pricing import ComponentSpec
from cmw.events.models import OutboxEvent
from cmw.mail import SmtpMailer
from cmw.marketplaces.models import Marketplace, MarketplaceKind
from cmw.marketplaces.service import platform
from cmw.notifications.models import Notification
from cmw.orders import approval
from cmw.orders import service as orders
from cmw.orders.models import Order, Subscription, TrialGrant
from tests import catalog_data
from tests.helpers import on_host, wait_until
from tests.servers import SmtpServer
from tests.test_notifications import notifying
from tests.test_pages_storefront import _csrf, _signed_in
from tests.test_pricing import FLAT, _plan
from tests.test_webhooks import _token, _vendor_user

Factory = sessionmaker[Session]
PRO = dataclasses.replace(
    _plan(ComponentSpec(kind=ComponentKind.FLAT, label="Base fee", unit_price=Decimal(30)), code="pro"),
    name="Pro",
)


def _requiring_approval(session: Session, slug: str) -> Product:
    product = catalog_data.publish_product(session, slug, [_plan(FLAT), PRO])
    live = session.get(ProductVersion, product.live_version_id)
    assert live is not None
    live.requires_approval = True
    return product


def _events(factory: Factory, topic: str, order_id: str) -> list[OutboxEvent]:
    with factory() as session:
        return [
            e
            for e in session.scalars(sa.select(OutboxEvent).where(OutboxEvent.topic == topic))
            if e.payload.get("order_id") == order_id
        ]


def _notifications(factory: Factory, email: str) -> list[Notification]:
    with factory() as session:
        return list(
            session.scalars(
                sa.select(Notification)
                .join(User, User.id == Notification.user_id)
                .where(User.email == email)
                .order_by(Notification.created_at)
            )
        )


def test_the_vendor_approves_and_rejects_orders_and_changes_and_both_sides_are_told(
    committed_db: Factory, app: Flask, smtp_server: SmtpServer
) -> None:
    with committed_db() as session:
        product = _requiring_approval(session, "gated-app")
        vendor = _vendor_user(session, product.vendor_id, "gate-vendor@example.test")
        other = catalog_data.publish_product(session, "other-app", [_plan(FLAT)])
        stranger = _vendor_user(session, other.vendor_id, "other-vendor@example.test")
        buyer, org = catalog_data.add_customer(session, "gate-buyer@example.test")
        customer, auditor, outsider = (
            _token(session, buyer),
            _token(session, vendor),
            _token(session, stranger),
        )
        session.commit()
    client = app.test_client()

    smtp_server.clear()
    mailer = SmtpMailer(f"smtp://{smtp_server.host}:{smtp_server.port}", "Mercato <no-reply@mercato.example>")
    with notifying(committed_db, mailer):
        placed = client.post(
            "/api/v1/orders", json={"product": "gated-app", "plan": "basic"}, headers=customer
        )
        assert placed.status_code == 201, placed.json
        order = placed.json
        assert (order["status"], order["subscription_id"]) == ("awaiting_approval", None)
        assert _events(committed_db, "deployment.requested", order["id"]) == []  # no machine yet
        assert _events(committed_db, "order.awaiting_approval", order["id"])[0].payload["auditor"] == "vendor"

        # the queue is the vendor's; nobody else decides
        queue = client.get("/api/v1/orders/approvals", headers=auditor).json
        assert [o["id"] for o in queue["items"]] == [order["id"]]
        assert client.get("/api/v1/orders/approvals", headers=outsider).json["items"] == []
        assert client.post(f"/api/v1/orders/{order['id']}/approve", headers=outsider).status_code == 403
        assert client.post(f"/api/v1/orders/{order['id']}/approve", headers=customer).status_code == 403

        approved = client.post(f"/api/v1/orders/{order['id']}/approve", headers=auditor)
        assert approved.status_code == 200, approved.json
        assert approved.json["status"] == "confirmed" and approved.json["subscription_id"]
        assert len(_events(committed_db, "deployment.requested", order["id"])) == 1
        again = client.post(f"/api/v1/orders/{order['id']}/approve", headers=auditor)
        assert again.status_code == 422
        assert "not waiting for approval: it is confirmed" in again.json["errors"][0]["message"]
        assert len(_events(committed_db, "deployment.requested", order["id"])) == 1  # nothing twice

        # a trial, rejected: the reason is required, and the trial is not spent
        trial = client.post(
            "/api/v1/orders", json={"product": "gated-app", "plan": "basic", "trial": True}, headers=customer
        ).json
        assert trial["status"] == "awaiting_approval"
        blank = client.post(f"/api/v1/orders/{trial['id']}/reject", json={"reason": "  "}, headers=auditor)
        assert blank.status_code == 422 and blank.json["errors"][0]["field"] == "reason"
        rejected = client.post(
            f"/api/v1/orders/{trial['id']}/reject",
            json={"reason": "Trials are for companies with a VAT number"},
            headers=auditor,
        )
        assert rejected.status_code == 200
        assert (rejected.json["status"], rejected.json["rejection_reason"]) == (
            "rejected",
            "Trials are for companies with a VAT number",
        )
        with committed_db() as session:
            assert session.get(TrialGrant, (org.id, product.id)) is None
        late = client.post(f"/api/v1/orders/{trial['id']}/approve", headers=auditor)
        assert late.status_code == 422 and "it is rejected" in late.json["detail"]

        # a change of plan waits too; the subscription stays as it is until approved
        subscription_id = approved.json["subscription_id"]
        change = client.put(
            f"/api/v1/subscriptions/{subscription_id}/plan", json={"plan": "pro"}, headers=customer
        )
        assert change.status_code == 202, change.json
        assert change.json["kind"] == "change" and change.json["status"] == "awaiting_approval"
        with committed_db() as session:
            subscription = session.get(Subscription, subscription_id)
            assert subscription is not None
            basic_plan_id = subscription.plan_id
            assert change.json["change_from"] == {"plan_id": str(basic_plan_id), "quantity": 1}
            # the check that undid the trial change left no event or history behind
            assert not session.scalar(
                sa.select(sa.func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.topic == "subscription.changed")
            )
        twice = client.put(
            f"/api/v1/subscriptions/{subscription_id}/quantity", json={"quantity": 2}, headers=customer
        )
        assert twice.status_code == 422 and "already waits for approval" in twice.json["detail"]
        same = client.put(
            f"/api/v1/subscriptions/{subscription_id}/plan", json={"plan": "basic"}, headers=customer
        )
        assert same.status_code == 422  # a change that could not be made does not wait
        assert client.post(f"/api/v1/orders/{change.json['id']}/approve", headers=auditor).status_code == 200
        detail = client.get(f"/api/v1/subscriptions/{subscription_id}", headers=customer).json
        assert detail["plan_id"] != str(basic_plan_id)
        assert detail["history"][-1]["kind"] == "plan_changed"
        assert detail["history"][-1]["actor_id"] == str(buyer.id)  # the customer's change, approved

        # both sides are told, in the app and by e-mail
        def told() -> list[str]:
            return [n.kind for n in _notifications(committed_db, "gate-buyer@example.test")]

        wait_until(lambda: told().count("order.approved") == 2 and "order.rejected" in told(), 30, "customer")
        refusal = next(
            n for n in _notifications(committed_db, "gate-buyer@example.test") if n.kind == "order.rejected"
        )
        assert "Trials are for companies with a VAT number" in refusal.body
        vendor_told = wait_until(
            lambda: len(found := _notifications(committed_db, "gate-vendor@example.test")) == 3 and found,
            30,
            "three requests told to the vendor",
        )
        assert {(n.kind, n.link) for n in vendor_told} == {("order.awaiting_approval", "/vendor/approvals")}
        assert _notifications(committed_db, "other-vendor@example.test") == []
        wait_until(
            lambda: any(
                "gate-vendor@example.test" in m.rcpt_tos
                and "waits for your approval" in str(m.message["Subject"])
                for m in smtp_server.messages
            ),
            30,
            "the vendor's e-mail",
        )


def test_a_reseller_decides_on_its_marketplace_and_its_own_orders_need_no_approval(
    client: FlaskClient,
    db_session: Session,
    make_marketplace: Callable[..., Marketplace],
    make_user: Callable[..., User],
    token_for: Callable[..., dict[str, str]],
) -> None:
    product = _requiring_approval(db_session, "reseller-gated")
    distributor = make_marketplace(slug="distri", domain="distri.test", sells_all_of_parent=True)
    reseller = make_marketplace(
        kind=MarketplaceKind.RESELLER,
        parent=distributor,
        slug="resell",
        domain="resell.test",
        sells_all_of_parent=True,
    )
    buyer, org = catalog_data.add_customer(db_session, "r-buyer@example.test", marketplace=reseller)
    reseller_admin = make_user(Role.ADMIN, marketplace=reseller)
    vendor = _vendor_user(db_session, product.vendor_id, "r-vendor@example.test")
    foreign = catalog_data.add_customer(db_session, "elsewhere@example.test")[1]  # on the platform
    customer, admin = token_for(buyer, reseller), token_for(reseller_admin, reseller)
    on_host(client, "resell.test")

    waiting = client.post(
        "/api/v1/orders", json={"product": "reseller-gated", "plan": "basic"}, headers=customer
    )
    assert waiting.status_code == 201, waiting.json
    assert waiting.json["status"] == "awaiting_approval"
    queue = client.get("/api/v1/orders/approvals", headers=admin).json["items"]
    assert [o["id"] for o in queue] == [waiting.json["id"]]
    # on the reseller's marketplace, the vendor is not the auditor
    on_host(client, None)
    assert client.get("/api/v1/orders/approvals", headers=token_for(vendor)).json["items"] == []
    on_host(client, "resell.test")
    assert (
        client.post(f"/api/v1/orders/{waiting.json['id']}/approve", headers=admin).json["status"]
        == "confirmed"
    )

    # the reseller orders for its customer: no approval
    own = client.post(
        "/api/v1/orders",
        json={"product": "reseller-gated", "plan": "pro", "organisation_id": str(org.id)},
        headers=admin,
    )
    assert own.status_code == 201, own.json
    assert own.json["status"] == "confirmed" and own.json["customer_id"] == str(org.id)
    order = db_session.get(Order, own.json["id"])
    assert order is not None and order.placed_by_id == reseller_admin.id
    # ... but only for customers of its own marketplace
    foreign_order = client.post(
        "/api/v1/orders",
        json={"product": "reseller-gated", "plan": "basic", "organisation_id": str(foreign.id)},
        headers=admin,
    )
    assert foreign_order.status_code == 422
    assert foreign_order.json["errors"][0]["field"] == "organisation_id"
    # and a change the reseller makes is made at once
    change = client.put(
        f"/api/v1/subscriptions/{own.json['subscription_id']}/quantity", json={"quantity": 1}, headers=admin
    )
    assert change.status_code == 200 and change.json["id"] == own.json["subscription_id"]


def test_an_order_is_decided_once_even_when_read_before_another_auditor_decided(
    committed_db: Factory,
) -> None:
    with committed_db() as session:
        product = _requiring_approval(session, "raced-app")
        vendor = _vendor_user(session, product.vendor_id, "raced-vendor@example.test")
        buyer, org = catalog_data.add_customer(session, "raced-buyer@example.test")
        placed = orders.place_order(
            session, platform(session), buyer, org, orders.OrderRequest(product="raced-app", plan="basic")
        )
        session.commit()
        order_id, vendor_id = placed.id, vendor.id
    with committed_db() as first, committed_db() as second:
        seen = first.get(Order, order_id)  # the first auditor's page loaded the order ...
        assert seen is not None and seen.status.value == "awaiting_approval"
        approval.approve(second, order_id, vendor_id)  # ... while the second approved it
        second.commit()
        with pytest.raises(approval.ApprovalError, match="not waiting for approval: it is confirmed"):
            approval.approve(first, order_id, vendor_id)
        first.rollback()
    with committed_db() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Subscription)) == 1
        # a change to what the subscription already is waits for nothing
        subscription = session.scalars(sa.select(Subscription)).one()
        assert (
            approval.request_change(
                session,
                subscription,
                plan=None,
                quantity=subscription.quantity,
                user_id=buyer.id,
                memberships=[],
            )
            is None
        )


def test_the_reseller_s_order_page_orders_for_its_customer_without_approval(
    app: Flask,
    db_session: Session,
    make_marketplace: Callable[..., Marketplace],
    make_user: Callable[..., User],
) -> None:
    _requiring_approval(db_session, "page-gated")
    reseller = make_marketplace(
        kind=MarketplaceKind.RESELLER, slug="resellp", domain="resellp.test", sells_all_of_parent=True
    )
    _buyer, org = catalog_data.add_customer(db_session, "p-buyer@example.test", marketplace=reseller)
    reseller_admin = make_user(Role.ADMIN, marketplace=reseller, password="a-long-password-1")
    db_session.commit()
    browser = app.test_client()
    on_host(browser, "resellp.test")
    _signed_in(browser, reseller_admin)
    page = browser.get("/admin/orders/new").get_data(as_text=True)
    assert f'value="{org.id}"' in page
    form = {
        "csrf_token": _csrf(page),
        "organisation_id": str(org.id),
        "product": "page-gated",
        "quantity": 1,
    }
    wrong = browser.post("/admin/orders/new", data={**form, "plan": "nope"})
    assert wrong.status_code == 422 and "is not a plan of this product" in wrong.get_data(as_text=True)
    placed = browser.post("/admin/orders/new", data={**form, "plan": "basic"})
    assert placed.status_code == 302
    order = db_session.scalar(sa.select(Order).where(Order.customer_id == org.id))
    assert order is not None and order.status.value == "confirmed" and order.placed_by_id == reseller_admin.id
    assert "the order is confirmed" in browser.get("/admin/orders").get_data(as_text=True)
