"""Vendor webhooks: events about a vendor's products reach its HTTPS endpoint (a loopback
receiver with a certificate from a throwaway CA), signed as documented; failures are
retried with exponential back-off for a day, logged with their answers, and can be
replayed; vendors see and manage only their own endpoints."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts import service as accounts
from cmw.accounts.models import Organisation, Role, User
from cmw.billing import service as billing
from cmw.marketplaces.service import platform
from cmw.orders import service as orders
from cmw.outbound import OutboundError, check_url
from cmw.webhooks import service as webhooks
from cmw.webhooks.consumer import VendorWebhooks
from cmw.webhooks.models import DeliveryState, WebhookDelivery, WebhookEndpoint
from tests import catalog_data
from tests.helpers import wait_until, worker_running
from tests.servers import HttpsReceiver, ReceivedRequest, free_port
from tests.test_pricing import FLAT, _plan

Factory = sessionmaker[Session]
Headers = Callable[..., dict[str, str]]


def verify(secret: str, request: ReceivedRequest, tolerance: int = 300) -> dict[str, Any]:
    """What a receiver does, from the documentation alone: check the signature header."""
    parts = dict(item.split("=", 1) for item in request.headers["Mercato-Signature"].split(","))
    timestamp = int(parts["t"])
    assert abs(time.time() - timestamp) <= tolerance, "stale signature"
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, parts["v1"]), "bad signature"
    body: dict[str, Any] = json.loads(request.body)
    assert request.headers["Mercato-Event"] == body["type"]
    assert request.headers["Content-Type"] == "application/json"
    return body


def _vendor_user(session: Session, vendor_id: uuid.UUID, email: str) -> User:
    user = accounts.create_user(session, email=email, name="Vendor", password="long-enough-pw")
    accounts.grant(session, user, platform(session), Role.VENDOR, session.get(Organisation, vendor_id))
    return user


def _token(session: Session, user: User) -> dict[str, str]:
    _, token = accounts.create_token(session, user, platform(session), name="t", expires_at=None)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def sender(receiver: HttpsReceiver) -> webhooks.Sender:
    return webhooks.Sender(allow_private=True, ca_bundle=receiver.ca_bundle or "", timeout=5)


@pytest.fixture
def relaying(committed_db: Factory) -> Iterator[VendorWebhooks]:
    """A worker relaying the outbox over RabbitMQ to the webhook consumer (its own queue)."""
    consumer = VendorWebhooks()
    with worker_running(committed_db, [consumer]):
        yield consumer


def _deliveries(factory: Factory) -> list[WebhookDelivery]:
    with factory() as session:
        return list(session.scalars(sa.select(WebhookDelivery).order_by(WebhookDelivery.created_at)))


def test_events_about_a_vendors_products_reach_its_endpoint_signed(
    committed_db: Factory,
    app: Flask,
    relaying: VendorWebhooks,
    receiver: HttpsReceiver,
    sender: webhooks.Sender,
) -> None:
    with committed_db() as session:
        hooked = catalog_data.publish_product(session, "hooked", [_plan(FLAT)])
        other = catalog_data.publish_product(session, "unhooked", [_plan(FLAT)])
        vendor = _vendor_user(session, hooked.vendor_id, "hooks-vendor@example.test")
        headers = _token(session, vendor)
        buyer, org = catalog_data.add_customer(session, "hooks-buyer@example.test")
        session.commit()
    client = app.test_client()
    made = client.post(
        "/api/v1/vendor/webhooks",
        json={"url": f"{receiver.url}/hooks", "description": "our CRM"},
        headers=headers,
    )
    assert made.status_code == 201, made.get_data(as_text=True)
    endpoint = made.get_json()
    secret = endpoint["secret"]
    assert secret.startswith("whsec_") and endpoint["topics"] == []
    listed = client.get("/api/v1/vendor/webhooks", headers=headers).get_json()
    assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]

    with committed_db() as session:
        marketplace = platform(session)
        buyer = session.get(User, buyer.id)
        for slug in ("hooked", "unhooked"):
            orders.place_order(
                session,
                marketplace,
                buyer,
                session.merge(org),
                orders.OrderRequest(product=slug, plan="basic"),
            )
        session.commit()
    # order.placed and subscription.activated of the vendor's product; none of the other one
    wait_until(lambda: len(_deliveries(committed_db)) == 2, 30, "two deliveries")
    report = billing.run(committed_db)
    assert len(report.invoices) == 1  # one invoice with both products' lines
    wait_until(lambda: len(_deliveries(committed_db)) == 3, 30, "the invoice's delivery")

    sent = webhooks.deliver_due(committed_db, app.extensions["mercato.sealer"], sender)
    assert sent == {"sent": 3, "delivered": 3}
    received = {verify(secret, r)["type"]: r for r in receiver.wait_for(3)}
    assert set(received) == {"order.placed", "subscription.activated", "invoice.issued"}
    assert all(r.path == "/hooks" and r.method == "POST" for r in received.values())

    placed = json.loads(received["order.placed"].body)
    assert placed["data"]["product_id"] == str(hooked.id)
    assert placed["data"]["vendor_id"] == str(hooked.vendor_id)
    assert placed["data"]["customer_id"] == str(org.id)
    assert "ssh_public_key" not in placed["data"]
    with committed_db() as session:
        deliveries = {d.topic: d for d in session.scalars(sa.select(WebhookDelivery))}
    assert placed["id"] == deliveries["order.placed"].event_id
    assert received["order.placed"].headers["Mercato-Delivery"] == str(deliveries["order.placed"].id)
    assert all(d.state is DeliveryState.DELIVERED and d.last_status == 200 for d in deliveries.values())

    # The invoice carries both products; this vendor is sent its own line only.
    invoice = json.loads(received["invoice.issued"].body)["data"]
    assert [line["product_id"] for line in invoice["lines"]] == [str(hooked.id)]
    assert "total" not in invoice and invoice["number"] == report.invoices[0]
    assert str(other.id) not in received["invoice.issued"].body.decode()

    # Nothing is sent twice, and a rotated secret signs what follows.
    assert webhooks.deliver_due(committed_db, app.extensions["mercato.sealer"], sender)["sent"] == 0
    rotated = client.post(f"/api/v1/vendor/webhooks/{endpoint['id']}/secret", headers=headers).get_json()
    assert rotated["secret"] != secret
    ping = client.post(f"/api/v1/vendor/webhooks/{endpoint['id']}/test", headers=headers)
    assert ping.status_code == 202 and ping.get_json()["topic"] == "webhook.ping"
    webhooks.deliver_due(committed_db, app.extensions["mercato.sealer"], sender)
    assert verify(rotated["secret"], receiver.wait_for(4)[-1])["data"]["endpoint_id"] == endpoint["id"]
    with pytest.raises(AssertionError, match="bad signature"):
        verify(secret, receiver.requests[-1])


def _endpoint_and_delivery(factory: Factory, app: Flask, url: str) -> tuple[uuid.UUID, str]:
    with factory() as session:
        product = catalog_data.publish_product(session, "retried", [_plan(FLAT)])
        endpoint, secret = webhooks.create_endpoint(
            session, app.extensions["mercato.sealer"], product.vendor_id, url=url, allow_private=True
        )
        made = webhooks.fan_out(
            session,
            "event-1",
            "order.placed",
            {
                "order_id": str(uuid.uuid4()),
                "product_id": str(product.id),
                "ssh_public_key": "ssh-ed25519 AAAA",
            },
        )
        assert made == 1
        session.commit()
        return endpoint.id, secret


def test_a_failing_endpoint_is_retried_with_growing_delays_and_each_attempt_logged(
    committed_db: Factory, app: Flask, receiver: HttpsReceiver, sender: webhooks.Sender
) -> None:
    _, secret = _endpoint_and_delivery(committed_db, app, f"{receiver.url}/flaky")
    sealer = app.extensions["mercato.sealer"]
    receiver.answer(500, (502, {"error": "upstream down"}))
    (delivery,) = _deliveries(committed_db)
    t0 = delivery.created_at

    assert webhooks.deliver_due(committed_db, sealer, sender, now=t0) == {"sent": 1, "delivered": 0}
    (delivery,) = _deliveries(committed_db)
    assert delivery.state is DeliveryState.PENDING and delivery.last_status == 500
    assert delivery.next_attempt_at == t0 + dt.timedelta(seconds=30)
    assert webhooks.deliver_due(committed_db, sealer, sender, now=t0 + dt.timedelta(seconds=29))["sent"] == 0
    webhooks.deliver_due(committed_db, sealer, sender, now=t0 + dt.timedelta(seconds=30))
    (delivery,) = _deliveries(committed_db)
    assert delivery.next_attempt_at == t0 + dt.timedelta(seconds=90)  # 30 s, then 60 s
    assert delivery.last_error == "the endpoint answered HTTP 502"
    assert webhooks.deliver_due(committed_db, sealer, sender, now=t0 + dt.timedelta(seconds=90)) == {
        "sent": 1,
        "delivered": 1,
    }

    with committed_db() as session:
        delivery = session.scalars(sa.select(WebhookDelivery)).one()
        assert delivery.state is DeliveryState.DELIVERED and delivery.attempts == 3
        assert [(a.status, a.response) for a in delivery.log] == [
            (500, '{"status": 500}'),
            (502, '{"error": "upstream down"}'),
            (200, '{"ok": true}'),
        ]
    bodies = [r.body for r in receiver.requests]
    assert len(bodies) == 3 and len(set(bodies)) == 1  # the same event, byte for byte
    body = verify(secret, receiver.requests[-1])
    assert body["id"] == "event-1" and "ssh_public_key" not in body["data"]


def test_an_endpoint_down_for_a_day_fails_the_delivery_which_the_vendor_replays(
    committed_db: Factory, app: Flask, receiver: HttpsReceiver, sender: webhooks.Sender
) -> None:
    endpoint_id, secret = _endpoint_and_delivery(committed_db, app, f"{receiver.url}/down")
    sealer = app.extensions["mercato.sealer"]
    receiver.default = (503, {"error": "maintenance"})
    (delivery,) = _deliveries(committed_db)
    t0, moments = delivery.created_at, []
    while delivery.state is DeliveryState.PENDING:
        assert delivery.next_attempt_at is not None
        moments.append(delivery.next_attempt_at)
        webhooks.deliver_due(committed_db, sealer, sender, now=delivery.next_attempt_at)
        (delivery,) = _deliveries(committed_db)
    assert delivery.state is DeliveryState.FAILED and delivery.next_attempt_at is None
    gaps = [b - a for a, b in itertools.pairwise(moments)]
    assert gaps[:4] == [dt.timedelta(seconds=s) for s in (30, 60, 120, 240)]
    assert max(gaps) == dt.timedelta(hours=2)
    assert moments[-1] <= t0 + dt.timedelta(days=1) < moments[-1] + dt.timedelta(hours=2)
    assert len(receiver.requests) == delivery.attempts == len(moments)

    # The vendor sees it failed, with every answer, and replays it once the endpoint is back.
    with committed_db() as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None
        vendor = _vendor_user(session, endpoint.vendor_id, "replay-vendor@example.test")
        headers = _token(session, vendor)
        session.commit()
    client = app.test_client()
    failed = client.get(
        f"/api/v1/vendor/webhooks/{endpoint_id}/deliveries?state=failed", headers=headers
    ).get_json()
    assert failed["total"] == 1 and failed["items"][0]["last_status"] == 503
    detail = client.get(f"/api/v1/vendor/webhooks/deliveries/{delivery.id}", headers=headers).get_json()
    assert len(detail["log"]) == delivery.attempts and {a["status"] for a in detail["log"]} == {503}
    assert json.loads(detail["body"])["id"] == "event-1"
    receiver.default = (200, {"ok": True})
    replayed = client.post(f"/api/v1/vendor/webhooks/deliveries/{delivery.id}/replay", headers=headers)
    assert replayed.status_code == 202 and replayed.get_json()["state"] == "pending"
    assert webhooks.deliver_due(committed_db, sealer, sender)["delivered"] == 1
    assert verify(secret, receiver.requests[-1])["id"] == "event-1"
    (delivery,) = _deliveries(committed_db)
    assert delivery.state is DeliveryState.DELIVERED and delivery.attempts == len(moments) + 1


def test_an_unreachable_endpoint_is_logged_without_a_status(
    committed_db: Factory, app: Flask, sender: webhooks.Sender
) -> None:
    _endpoint_and_delivery(committed_db, app, f"https://127.0.0.1:{free_port()}/nobody")
    webhooks.deliver_due(committed_db, app.extensions["mercato.sealer"], sender)
    (delivery,) = _deliveries(committed_db)
    assert delivery.state is DeliveryState.PENDING and delivery.last_status is None
    assert delivery.last_error and "ConnectionError" in delivery.last_error


def test_endpoints_are_checked_and_each_vendor_sees_only_its_own(
    client: FlaskClient, make_user: Callable[..., User], token_for: Headers, shop: dict[str, Any]
) -> None:
    vendor = token_for(shop["vendor"])
    url = "https://127.0.0.1:9/hooks"
    plain = client.post("/api/v1/vendor/webhooks", json={"url": "http://127.0.0.1:9/hooks"}, headers=vendor)
    assert plain.status_code == 422
    assert plain.get_json()["errors"] == [
        {"location": "json", "field": "url", "message": "the URL must start with https://"}
    ]
    wrong = client.post(
        "/api/v1/vendor/webhooks", json={"url": url, "topics": ["order.eaten"]}, headers=vendor
    )
    assert wrong.status_code == 422 and wrong.get_json()["errors"][0]["field"] == "topics.0"
    made = client.post(
        "/api/v1/vendor/webhooks",
        json={"url": url, "topics": ["order.placed", "invoice.issued"]},
        headers=vendor,
    )
    assert made.status_code == 201 and made.get_json()["topics"] == ["invoice.issued", "order.placed"]
    endpoint = f"/api/v1/vendor/webhooks/{made.get_json()['id']}"
    paused = client.patch(endpoint, json={"active": False}, headers=vendor).get_json()
    assert paused["active"] is False

    stranger = token_for(make_user(Role.VENDOR))
    assert client.get(endpoint, headers=stranger).status_code == 404
    assert client.delete(endpoint, headers=stranger).status_code == 404
    assert client.get("/api/v1/vendor/webhooks", headers=stranger).get_json() == []
    customer = client.get("/api/v1/vendor/webhooks", headers=token_for(make_user(Role.CUSTOMER)))
    assert customer.status_code == 403
    assert client.delete(endpoint, headers=vendor).status_code == 204
    assert client.get(endpoint, headers=vendor).status_code == 404


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/hooks", "private or loopback"),
        ("https://169.254.169.254/latest/meta-data", "link-local or cloud metadata"),
        ("https://[::1]:8443/", "private or loopback"),
        ("https://10.1.2.3/", "private or loopback"),
        ("https://user:pw@93.184.216.34/", "user name or password"),
        ("ftp://93.184.216.34/", "must start with https://"),
        ("https://no-such-host.invalid/", "does not resolve"),
    ],
)
def test_outbound_urls_may_not_reach_inside_unless_allowed(url: str, reason: str) -> None:
    with pytest.raises(OutboundError, match=reason):
        check_url(url, allow_private=False)


def test_a_public_address_is_allowed() -> None:
    # an address literal: nothing is resolved or sent
    assert check_url(" https://93.184.216.34/hooks ", allow_private=False) == "https://93.184.216.34/hooks"


def test_the_vendors_listening_are_read_once_per_transaction_and_again_after_an_endpoint_changes(
    committed_db: Factory, app: Flask
) -> None:
    """The consumer fans out a batch of events in one transaction: which vendors have an
    active endpoint is asked once for all of them, and asked again after an endpoint is
    made or switched on in that transaction, so the events after it reach it."""
    sealer = app.extensions["mercato.sealer"]
    asked: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "DISTINCT webhook_endpoints.vendor_id" in statement:
            asked.append(statement)

    with committed_db() as session:
        product = catalog_data.publish_product(session, "listened", [_plan(FLAT)])
        payload = {"order_id": str(uuid.uuid4()), "product_id": str(product.id), "ssh_public_key": "k"}
        session.commit()
        sa.event.listen(session.connection(), "before_cursor_execute", count)

        def fan_out(n: int) -> int:
            return webhooks.fan_out(session, f"listened-{n}", "order.placed", payload)

        assert [fan_out(0), fan_out(1)] == [0, 0]
        assert len(asked) == 1
        endpoint, _ = webhooks.create_endpoint(
            session, sealer, product.vendor_id, url="https://127.0.0.1:9/hook", allow_private=True
        )
        assert [fan_out(2), fan_out(3)] == [1, 1]
        assert len(asked) == 2
        webhooks.update_endpoint(session, endpoint, {"active": False})
        assert fan_out(4) == 0
        webhooks.update_endpoint(session, endpoint, {"active": True})
        assert fan_out(5) == 1
        session.commit()
        # a new transaction asks again
        assert fan_out(6) == 1
        assert len(asked) == 4
        session.commit()
    assert sorted(d.event_id for d in _deliveries(committed_db)) == [f"listened-{n}" for n in (2, 3, 5, 6)]
