"""Deployments through the API and the events around them, on the dummy cloud: who sees
which deployment, the history, an administrator's retry and forced removal, the end of a
subscription removing its machine, and who is told of a failure."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from cmw.accounts.models import Role, User
from cmw.crypto import Sealer
from cmw.events.consumer import Event
from cmw.events.models import OutboxEvent
from cmw.notifications.consumers import NotificationConsumer
from cmw.notifications.models import Notification
from deployer import service
from deployer.consumer import DeploymentRequests
from deployer.engine import Engine
from deployer.models import Deployment, DeploymentState
from tests.catalog_data import deployment as spec_of
from tests.catalog_data import publish
from tests.test_pages_storefront import _csrf, _signed_in

Headers = Callable[..., dict[str, str]]
S = DeploymentState


@pytest.fixture
def sealer(app: Flask) -> Sealer:
    found: Sealer = app.extensions["mercato.sealer"]
    return found


@pytest.fixture
def engine(db_session: Session, sealer: Sealer) -> Engine:
    factory = sessionmaker(bind=db_session.connection(), join_transaction_mode="create_savepoint")
    return Engine(factory, sealer, base_delay=0.01, poll_seconds=0.01)


@pytest.fixture
def shop(
    client: FlaskClient,
    db_session: Session,
    sealer: Sealer,
    make_user: Callable[..., User],
    token_for: Headers,
) -> dict[str, Any]:
    """A dummy cloud named as the catalog fixtures' target, a published product, a buyer."""
    service.create_cloud_account(
        db_session,
        sealer,
        service.CloudAccountInput(
            slug=spec_of()[0]["cloud_account"], name="Dummy", provider="dummy", credentials={}
        ),
    )
    db_session.commit()
    vendor, admin = make_user(Role.VENDOR), make_user(Role.ADMIN)
    # deploying the dummy cloud's image "1"
    product = publish(
        client, token_for(vendor), token_for(admin), deployment=[{**spec_of()[0], "image": "1"}]
    )
    buyer, other = make_user(Role.CUSTOMER), make_user(Role.CUSTOMER)
    return {"product": product, "vendor": vendor, "admin": admin, "buyer": buyer, "other": other}


def place(client: FlaskClient, headers: dict[str, str]) -> dict[str, Any]:
    response = client.post(
        "/api/v1/orders", json={"product": "wiki-server", "plan": "team", "quantity": 5}, headers=headers
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def consume(db_session: Session, topic: str, **match: str) -> None:
    """Hand the outbox's matching events to the deployer's consumer, as the worker would."""
    consumer = DeploymentRequests()
    for row in db_session.scalars(sa.select(OutboxEvent).where(OutboxEvent.topic == topic)):
        if all(row.payload.get(k) == v for k, v in match.items()):
            consumer.handle(db_session, Event(str(row.id), row.topic, row.payload, row.marketplace_id))
    db_session.commit()


def run(engine: Engine) -> None:
    assert engine.run_until_idle(200) < 200


def test_who_sees_a_deployment_and_its_history(
    client: FlaskClient, db_session: Session, engine: Engine, shop: dict[str, Any], token_for: Headers
) -> None:
    buyer_h = token_for(shop["buyer"])
    placed = place(client, buyer_h)
    consume(db_session, "deployment.requested", subscription_id=placed["subscription_id"])
    run(engine)

    page = client.get(f"/api/v1/deployments?subscription_id={placed['subscription_id']}", headers=buyer_h)
    assert page.status_code == 200 and page.get_json()["total"] == 1
    item = page.get_json()["items"][0]
    assert (
        item["state"] == "running"
        and item["url"] == f"https://{item['address']}/"
        and item["login"] == "admin"
    )
    detail = client.get(f"/api/v1/deployments/{item['id']}", headers=buyer_h).get_json()
    assert [h["to_state"] for h in detail["history"]][:3] == ["requested", "preparing", "creating_vm"]
    assert detail["history"][-1]["to_state"] == "running"
    assert "password" not in str(detail)

    # the vendor of the product sees it; another customer does not
    vendor_page = client.get("/api/v1/deployments", headers=token_for(shop["vendor"])).get_json()
    assert [d["id"] for d in vendor_page["items"]] == [item["id"]]
    assert (
        client.get(f"/api/v1/deployments/{item['id']}", headers=token_for(shop["other"])).status_code == 404
    )
    assert client.get("/api/v1/deployments", headers=token_for(shop["other"])).get_json()["total"] == 0
    # the order is fulfilled
    order = client.get(f"/api/v1/orders/{placed['id']}", headers=buyer_h).get_json()
    assert order["status"] == "fulfilled"


def test_an_expired_trial_removes_its_machine(
    client: FlaskClient, db_session: Session, engine: Engine, shop: dict[str, Any], token_for: Headers
) -> None:
    placed = place(client, token_for(shop["buyer"]))
    consume(db_session, "deployment.requested", subscription_id=placed["subscription_id"])
    run(engine)
    subscription_id = uuid.UUID(placed["subscription_id"])
    # what orders emits when the trial ends without a payment method
    consumer = DeploymentRequests()
    event = Event(str(uuid.uuid4()), "subscription.expired", {"subscription_id": str(subscription_id)}, None)
    consumer.handle(db_session, event)
    db_session.commit()
    run(engine)
    deployment = db_session.scalar(sa.select(Deployment).where(Deployment.subscription_id == subscription_id))
    assert deployment is not None
    db_session.refresh(deployment)
    assert deployment.state is S.REMOVED and deployment.removed_at is not None


def test_admin_retries_a_failed_deployment_and_forces_removal(
    client: FlaskClient, db_session: Session, engine: Engine, shop: dict[str, Any], token_for: Headers
) -> None:
    placed = place(client, token_for(shop["buyer"]))
    consume(db_session, "deployment.requested", subscription_id=placed["subscription_id"])
    deployment = db_session.scalar(
        sa.select(Deployment).where(Deployment.subscription_id == uuid.UUID(placed["subscription_id"]))
    )
    assert deployment is not None
    deployment.spec = {**deployment.spec, "image": "no-such-image"}  # the dummy cloud has no such image
    db_session.commit()
    run(engine)
    db_session.refresh(deployment)
    assert deployment.state is S.FAILED and "no image 'no-such-image'" in (deployment.last_error or "")

    admin_h = token_for(shop["admin"])
    assert (
        client.post(
            f"/api/v1/admin/deployments/{deployment.id}/retry", headers=token_for(shop["buyer"])
        ).status_code
        == 403
    )
    deployment.spec = {**deployment.spec, "image": "2"}  # fixed, say, by the vendor
    db_session.commit()
    retried = client.post(f"/api/v1/admin/deployments/{deployment.id}/retry", headers=admin_h)
    assert retried.status_code == 200 and retried.get_json()["state"] == "requested"
    run(engine)
    db_session.refresh(deployment)
    assert deployment.state is S.RUNNING
    again = client.post(f"/api/v1/admin/deployments/{deployment.id}/retry", headers=admin_h)
    assert again.status_code == 409

    removed = client.post(f"/api/v1/admin/deployments/{deployment.id}/remove", headers=admin_h)
    assert removed.status_code == 200 and removed.get_json()["desired"] == "removed"
    run(engine)
    db_session.refresh(deployment)
    assert deployment.state is S.REMOVED


def test_a_failure_is_told_to_customer_and_vendor(
    client: FlaskClient, db_session: Session, shop: dict[str, Any], token_for: Headers
) -> None:
    placed = place(client, token_for(shop["buyer"]))
    payload = {
        "deployment_id": str(uuid.uuid4()),
        "subscription_id": placed["subscription_id"],
        "customer_id": placed["customer_id"],
        "vendor_id": str(shop["vendor"].memberships[0].organisation_id),
        "product_id": placed["product_id"],
        "reason": "creating vm: quota exceeded",
    }
    NotificationConsumer().handle(db_session, Event(str(uuid.uuid4()), "deployment.failed", payload, None))
    told = {
        n.user_id: n
        for n in db_session.scalars(sa.select(Notification).where(Notification.kind == "deployment.failed"))
    }
    assert set(told) == {shop["buyer"].id, shop["vendor"].id}
    assert "quota exceeded" in told[shop["buyer"].id].body


def test_admin_deployments_page_retries_and_removes(
    app: Flask,
    client: FlaskClient,
    db_session: Session,
    engine: Engine,
    shop: dict[str, Any],
    token_for: Headers,
    make_user: Callable[..., User],
) -> None:
    placed = place(client, token_for(shop["buyer"]))
    consume(db_session, "deployment.requested", subscription_id=placed["subscription_id"])
    deployment = db_session.scalar(
        sa.select(Deployment).where(Deployment.subscription_id == uuid.UUID(placed["subscription_id"]))
    )
    assert deployment is not None
    deployment.spec = {**deployment.spec, "image": "no-such-image"}
    db_session.commit()
    run(engine)

    admin = make_user(Role.ADMIN, password="a-long-password-1")
    browser = app.test_client()
    _signed_in(browser, admin)
    page = browser.get("/admin/deployments?state=failed").get_data(as_text=True)
    assert "no image &#39;no-such-image&#39;" in page and "Retry" in page
    deployment.spec = {**deployment.spec, "image": "1"}
    db_session.commit()
    browser.post(f"/admin/deployments/{deployment.id}/retry", data={"csrf_token": _csrf(page)})
    assert "Started again." in browser.get("/admin/deployments").get_data(as_text=True)
    run(engine)
    db_session.refresh(deployment)
    assert deployment.state is S.RUNNING
    page = browser.get("/admin/deployments?state=running").get_data(as_text=True)
    browser.post(f"/admin/deployments/{deployment.id}/remove", data={"csrf_token": _csrf(page)})
    run(engine)
    db_session.refresh(deployment)
    assert deployment.state is S.REMOVED
    # a customer has no such page
    customer = app.test_client()
    _signed_in(customer, make_user(Role.CUSTOMER, password="a-long-password-1"))
    assert customer.get("/admin/deployments").status_code == 403
